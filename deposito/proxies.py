"""Several proxies for one client: the address lists, the order a client
tries them in, and the error when none answers.

Every proxy that shares a catalog is a full front door, so a client may be
given several. Both clients and the ``deposito`` command take them the same
way (a list, or one comma-separated string) and fail over by the same rules:
see :mod:`deposito.blocking` and :mod:`deposito.client`.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

from deposito.protocols.words import digits
from deposito.wire import ConnectionLost


def split_list(text: str) -> list[str]:
    """The items of a comma-separated list; ValueError on an empty one,
    since ``a:7000,,b:7000`` is more likely a typo than a wish."""
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ValueError(f"empty item in the list {text!r}")
    return items


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a (host, port) pair; ValueError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not digits(port, 5) or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or any(c.isspace() for c in host):  # "a:1;b:2", "a:1 b:2": a list mistyped
        raise ValueError(f"expected HOST:PORT (IPv6 in brackets), got {address!r}")
    return host, int(port)


Addresses = Union[str, tuple[str, int], Sequence[Union[str, tuple[str, int]]]]


def parse_addresses(addresses: Addresses) -> list[tuple[str, int]]:
    """(host, port) pairs from ``"HOST:PORT"``, ``"a:7000,b:7000"``, a
    ``(host, port)`` pair, or a list of either; ValueError when one is bad
    or there are none."""
    if isinstance(addresses, str):
        items: list[Union[str, tuple[str, int]]] = list(split_list(addresses))
    elif isinstance(addresses, tuple) and len(addresses) == 2 and isinstance(addresses[1], int):
        items = [(str(addresses[0]), addresses[1])]
    else:
        items = list(addresses)
    if not items:
        raise ValueError("no proxy address given")
    return [parse_address(item) if isinstance(item, str) else (item[0], int(item[1])) for item in items]


def show(address: tuple[str, int]) -> str:
    """``HOST:PORT`` as a person writes it (brackets around an IPv6 host)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def after(current: int, count: int) -> list[int]:
    """Where a client's next request goes when its connection is gone: the
    other proxies' places, starting with the one after ``current`` and
    wrapping round, then ``current`` again, last. A connection the proxy
    closed while idle, or one lost on a request before, never rules a proxy
    out for the requests after."""
    return [(current + step) % count for step in range(1, count + 1)]


def reason(error: BaseException) -> str:
    """Why a connection failed, in a few words for a person."""
    if isinstance(error, ConnectionLost):
        return error.message
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.errno is not None and not error.strerror:
        return os.strerror(error.errno).lower()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


class ProxiesUnreachable(ConnectionError):
    """None of several proxies could be reached (or each was lost before
    the request went out). ``failures`` holds ``(address, reason)`` pairs,
    in the order they were tried.

    With a single proxy the clients raise the connection's own error
    instead, as they always did.
    """

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = list(failures)
        super().__init__("cannot reach any proxy: " + "; ".join(f"{a}: {why}" for a, why in self.failures))
