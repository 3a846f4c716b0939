"""Where copies go: distinct servers, distinct zones first, then most free space;
and in which order a file's copies are read."""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence, TypeVar

from deposito.errors import NoSpace, Unavailable
from deposito.roster import Member

M = TypeVar("M", bound=Member)


def place(candidates: Iterable[Member], count: int, size: int,
          taken: Sequence[Member] = ()) -> list[Member]:
    """Choose ``count`` up servers for a blob of ``size`` bytes.

    ``taken`` are servers that already hold (or are writing) a copy: they are
    never chosen again, and their zones count as used unless they are dead. Raises Unavailable when
    too few servers are up, NoSpace when too few of them have room.
    """
    taken_ids = {m.id for m in taken}
    live = [m for m in candidates if m.up and m.id not in taken_ids]
    if len(live) < count:
        if taken:
            raise Unavailable(f"{count} more servers needed, {len(live)} others up")
        raise Unavailable(f"{count} servers needed, {len(live)} up")
    roomy = sorted((m for m in live if m.free() >= size), key=lambda m: (-m.free(), m.id))
    if len(roomy) < count:
        raise NoSpace(f"only {len(roomy)} servers have {size} bytes free, {count} needed")
    # Only the zones of copies that stay count as covered: a dead server's copy is
    # being replaced, and its zone is the one the new copy should go back to.
    zones = {m.zone for m in taken if m.state in ("up", "down")}
    chosen: list[Member] = []
    for m in roomy:  # first pass: one per new zone
        if len(chosen) < count and m.zone not in zones:
            chosen.append(m)
            zones.add(m.zone)
    for m in roomy:  # then the roomiest of the rest
        if len(chosen) < count and m not in chosen:
            chosen.append(m)
    return chosen


def read_order(blob: str, holders: Iterable[M]) -> list[M]:
    """The order in which to try a blob's copies (rendezvous hashing).

    Every reader of a blob tries the same copy first, so that copy is the one
    worth keeping in its server's page cache (the others are written around
    the cache); from blob to blob the first copy differs, so reads spread
    over the servers.
    """
    return sorted(holders, key=lambda m: hashlib.blake2b(f"{blob}/{m.id}".encode(), digest_size=8).digest())
