"""What the catalog hands out and takes in, whatever its backend: a file's
record, the reconciler's outcome for a queued file, the counts STATUS shows,
and the declaration of what each catalog call does (:func:`effects`)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, TypeVar

import attrs

# A queued file waits for this long at most, when only a server coming back
# (or dying) can change what can be done for it: such a change wakes it.
WAITING = 1e18


class FileRecord(NamedTuple):
    """The newest committed version of a name. (A named tuple, not an attrs
    class: one is made per row of every listing, and a tuple is made five
    times as fast as a frozen attrs instance: 0.4 against 2 µs, a whole
    second of a million-name LIST.)"""

    name: str
    version: int
    blob: str
    size: int
    sha256: str
    replicas: int
    servers: tuple[str, ...]
    created: float = 0.0  # when this version was committed (seconds since the epoch)
    meta: str = ""  # what a gateway keeps with the version (S3: its ETag, type, user metadata)
    parts: str = ""  # a version made of parts (S3 multipart): its upload's id (see deposito.hidden)



# A conditional write's condition (S3's If-Match, If-None-Match): called in the
# commit's transaction with the name's current record (None when there is
# none), once the name is locked; it raises (a DepositoError) to refuse the write.
Expect = Callable[[Optional[FileRecord]], None]


@attrs.frozen
class Outcome:
    """What the reconciler found for one queued file: ``due`` None when
    there is nothing left to do for it, else when to look again.
    ``passed``: the file is left to the other proxies (another sees copies
    this one cannot), which may take it from ``due`` on."""

    name: str
    gen: int
    due: float | None
    rank: int = 0
    wanted: int | None = None
    have: int | None = None
    moves: int = 0
    passed: bool = False


@attrs.frozen
class Counts:
    """The cluster's counts as the catalog keeps them (see :meth:`deposito.catalog.Catalog.counts`)."""

    files: int
    bytes: int
    wanted: int  # copies wanted, over all files
    healthy: int  # copies healthy, as last looked at (files not queued have what they want)
    under: int  # queued files found below their wanted count
    over: int
    moves: int  # copies to make or drop, as planned for the queued files
    fresh: int  # queued files not looked at yet
    queued: int  # queued files
    garbage: list[tuple[str, int]]  # copies to delete, by server


Method = TypeVar("Method", bound=Callable[..., Any])


def effects(*, durable: bool, keeps_records: bool, one_record: bool = False, tells: bool = False,
            prompt: bool = False, answers_later: bool = False, claims: bool = False) -> Callable[[Method], Method]:
    """Declares what a catalog method's call does, on the method itself;
    :class:`deposito.catalog.CatalogThread` calls nothing that does not
    declare it.

    ``durable=False``: what it records may be lost in a machine crash without
    harm, so a batch of nothing else commits without an fsync (a later durable
    commit covers it): an unrecorded intent leaves an orphan that the
    servers' inventory finds; a version number not kept was never visible; a
    garbage entry not forgotten is deleted again ("absent"); a server's
    address comes again when it joins. The reconciler's queue is a guide, not
    a record: a lost change to it is found again by the events that follow
    and by the reconciler's sweep. An inventory's result lost likewise is
    found again by the server's next one.

    ``keeps_records=True``: it leaves every name's record as it was (files
    and copies are untouched), so the records the catalog thread keeps in
    memory stay true.

    ``one_record=True``: it may change the record of the name given as its
    first argument, and of hidden names (which are never kept), but no other:
    only that name's kept record is forgotten.

    ``tells=True``: among proxies on a shared catalog, it names the records
    it changed as it goes (``Catalog._tell``), and only those are forgotten
    by the other proxies (see :meth:`deposito.catalog.Catalog.announce`);
    otherwise a change that is not ``one_record`` makes them forget all.

    ``prompt=True``: it takes in what a server lists, never a change a
    client asked for, so it runs at once after this proxy joined the
    others, where other changes wait (deposito.catalog.coherence.WAIT): a
    proxy alone until then may answer from memory without it for the few
    seconds its trust lasts, and the server's listing does not wait
    (its connection is not read meanwhile).

    ``answers_later=True``: nothing it sends waits on an answer, and what it
    returns is read only once its transaction is committed (see
    :meth:`deposito.catalog.database.Database._tx_later`), so a batch of
    such calls sends its COMMIT along with them: one round trip in all.

    ``claims=True``: it records rows this proxy owns (intents, queued files
    or garbage it claims). Among proxies on a shared catalog it runs only
    while this proxy's row is there, as a change does (Catalog.guard_changes):
    a proxy retired meanwhile (silent past its lease) must claim nothing,
    since no proxy would ever hand its claims over. Calls that answer later
    claim (their intents).
    """
    def declare(method: Method) -> Method:
        method.answers_later = answers_later  # type: ignore[attr-defined]
        method.claims = claims or answers_later  # type: ignore[attr-defined]
        method.prompt = prompt  # type: ignore[attr-defined]
        method.durable = durable  # type: ignore[attr-defined]
        method.keeps_records = keeps_records  # type: ignore[attr-defined]
        method.one_record = one_record  # type: ignore[attr-defined]
        method.tells = tells  # type: ignore[attr-defined]
        return method
    return declare


def tells(method: Callable[..., Any]) -> bool:
    return bool(getattr(method, "tells", False))


def is_durable(method: Callable[..., Any]) -> bool:
    """Whether a call of ``method`` must be durable before it is answered
    (a method that declares nothing is taken to be)."""
    return bool(getattr(method, "durable", True))


def keeps_records(method: Callable[..., Any]) -> bool:
    """Whether ``method`` leaves every name's record as it was (see :func:`effects`)."""
    return bool(getattr(method, "keeps_records"))


def prompt(method: Callable[..., Any]) -> bool:
    """Whether ``method`` may change records at once after this proxy joined the others (see :func:`effects`)."""
    return bool(getattr(method, "prompt", False))


def claims(method: Callable[..., Any]) -> bool:
    """Whether ``method`` records rows this proxy owns (see :func:`effects`)."""
    return bool(getattr(method, "claims", False))


def answers_later(method: Callable[..., Any]) -> bool:
    """Whether ``method``'s answer is read after its commit (see :func:`effects`)."""
    return bool(getattr(method, "answers_later", False))


def one_record(method: Callable[..., Any]) -> bool:
    """Whether ``method`` changes only the record its first argument names (see :func:`effects`)."""
    return bool(getattr(method, "one_record"))
