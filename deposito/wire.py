"""The text protocol as the clients see it: request lines built, reply
lines parsed into values, and the errors a reply can raise.

Plain functions and values, no I/O: shared by the Twisted client
(:mod:`deposito.client`) and the blocking one (:mod:`deposito.blocking`).
"""

from __future__ import annotations

from typing import Callable, Optional

from attrs import frozen

from deposito.errors import BadArgs, DepositoError, from_reply
from deposito.protocols.words import check_name, digits, fields, quote, split

#: Bytes read from a file or written to the wire at a time.
CHUNK_SIZE = 64 * 1024
#: The longest reply line the clients accept.
MAX_REPLY_LINE = 64 * 1024
#: Names asked per LIST page when a client pages through a listing.
PAGE_SIZE = 1000

#: ``progress(done, total)``: called as file bytes move, ``done`` growing to ``total``.
Progress = Callable[[int, int], None]


# ---------------------------------------------------------------- exceptions


class ConnectionLost(DepositoError, ConnectionError):
    """The connection to the proxy closed or broke before the reply was complete.

    A client-side condition, not an ERR code of the protocol. It is an
    ``OSError`` too, so code that handles socket errors catches it.
    """

    code = "connectionlost"


class OutcomeUnknown(ConnectionLost):
    """The connection was lost after a PUT, DELETE or REPLICAS was sent and
    before its answer came: the proxy may or may not have done it.

    The clients never send such a request again by themselves (a second PUT
    would make a second version); look (STAT) and decide.
    """

    code = "outcomeunknown"

    @classmethod
    def after(cls, lost: ConnectionLost, command: str) -> OutcomeUnknown:
        """The loss of a ``command`` already sent, worded so."""
        return cls(f"{lost.message}, after the {command} was sent: whether it took effect is unknown")


class ProtocolError(DepositoError):
    """The proxy sent something the client cannot read; the connection is closed."""

    code = "protocol"


class ChecksumMismatch(DepositoError):
    """The bytes moved do not have the sha256 the proxy announced."""

    code = "checksum"


# ---------------------------------------------------------------- replies


@frozen
class Stored:
    """The answer to PUT: the new version is committed on ``replicas`` servers."""

    name: str
    version: int
    size: int
    sha256: str
    replicas: int


@frozen
class Download:
    """The answer to GET: what was written to the destination."""

    name: str
    size: int
    sha256: str
    version: int


@frozen
class Stat:
    """The answer to STAT: the newest version of a name and where its copies are."""

    name: str
    size: int
    sha256: str
    version: int
    replicas: int
    have: int
    servers: tuple[str, ...]


@frozen
class Entry:
    """One line of LIST."""

    size: int
    wanted: int
    have: int
    name: str


@frozen
class ReplicaCount:
    """The answer to REPLICAS: the wanted count now set and the healthy copies now."""

    name: str
    replicas: int
    have: int


@frozen
class Server:
    """One line of SERVERS; ``state`` is ``up``, ``down`` or ``dead``."""

    id: str
    address: str
    state: str
    used: int
    capacity: int
    blobs: int
    zone: str


@frozen
class Status:
    """The answer to STATUS: cluster-wide counts."""

    files: int
    bytes: int
    servers_up: int
    servers_down: int
    under: int
    over: int
    repairs_queued: int
    repairs_running: int


def check_reply(line: str) -> str:
    """``line`` if it is an OK reply; raise its exception if it is an ERR reply."""
    if line == "OK" or line.startswith("OK "):
        return line
    if line == "ERR" or line.startswith("ERR "):
        raise from_reply(line)
    raise ProtocolError(f"unexpected reply {line[:200]!r}")


def _ints(found: dict[str, str], keys: tuple[str, ...], line: str) -> dict[str, int]:
    try:
        return {key: int(found[key]) for key in keys}
    except (KeyError, ValueError):
        raise ProtocolError(f"reply lacks one of {', '.join(keys)}: {line[:200]!r}") from None


def text_field(found: dict[str, str], key: str, line: str) -> str:
    """The field ``key`` of a reply; ProtocolError when the reply lacks it."""
    try:
        return found[key]
    except KeyError:
        raise ProtocolError(f"reply lacks {key}: {line[:200]!r}") from None


def _fields(line: str) -> dict[str, str]:
    try:
        return fields(line)
    except BadArgs as e:
        raise ProtocolError(f"bad quoting in reply {line[:200]!r}: {e.message}") from None


def _words(line: str) -> list[str]:
    try:
        return split(line)
    except BadArgs as e:
        raise ProtocolError(f"bad quoting in reply {line[:200]!r}: {e.message}") from None


def parse_stored(line: str) -> Stored:
    """``OK stored name=.. version=.. size=.. sha256=.. replicas=..``"""
    found = _fields(check_reply(line))
    n = _ints(found, ("version", "size", "replicas"), line)
    return Stored(name=text_field(found, "name", line), sha256=text_field(found, "sha256", line), **n)


def parse_get_header(line: str) -> tuple[int, dict[str, str]]:
    """``OK <size> sha256=.. version=..``: the size that follows and the fields."""
    words = check_reply(line).split(" ", 2)
    if len(words) < 2 or not digits(words[1]):
        raise ProtocolError(f"GET reply without a size: {line[:200]!r}")
    return int(words[1]), _fields(line)


def parse_stat(line: str) -> Stat:
    """``OK name=.. size=.. sha256=.. version=.. replicas=.. have=.. servers=a,b``"""
    found = _fields(check_reply(line))
    n = _ints(found, ("size", "version", "replicas", "have"), line)
    servers = text_field(found, "servers", line)
    ids = tuple(s for s in servers.split(",") if s) if servers != "-" else ()
    return Stat(name=text_field(found, "name", line), sha256=text_field(found, "sha256", line), servers=ids, **n)


def parse_entry(line: str) -> Entry:
    """A LIST line: ``<size> <wanted> <have> <name>``."""
    words = _words(line)
    if len(words) != 4 or not all(digits(w) for w in words[:3]):
        raise ProtocolError(f"bad LIST line {line[:200]!r}")
    return Entry(size=int(words[0]), wanted=int(words[1]), have=int(words[2]), name=words[3])


def parse_replicas(line: str) -> ReplicaCount:
    """``OK name=.. replicas=.. have=..``"""
    found = _fields(check_reply(line))
    n = _ints(found, ("replicas", "have"), line)
    return ReplicaCount(name=text_field(found, "name", line), **n)


def _leading(line: str, count: int) -> tuple[list[str], str]:
    """The first ``count`` words of ``line`` (quoted or bare) and the rest of it."""
    i, n, ends = 0, len(line), []
    for _ in range(count):
        while i < n and line[i] == " ":
            i += 1
        if i < n and line[i] == '"':
            i += 1
            while i < n and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
        else:
            while i < n and line[i] != " ":
                i += 1
        ends.append(i)
    words = _words(line[: ends[-1]]) if ends else []
    if len(words) != count:
        raise ProtocolError(f"expected {count} words first in {line[:200]!r}")
    return words, line[ends[-1]:]


def parse_server(line: str) -> Server:
    """A SERVERS line: ``<id> <host>:<port> <state> used=.. capacity=.. blobs=.. zone=..``"""
    (sid, address, state), rest = _leading(line, 3)
    found = _fields(rest)
    n = _ints(found, ("used", "capacity", "blobs"), line)
    return Server(id=sid, address=address, state=state, zone=found.get("zone", ""), **n)


def parse_status(line: str) -> Status:
    """``OK files=.. bytes=.. servers_up=.. servers_down=.. under=.. over=.. repairs_queued=.. repairs_running=..``"""
    found = _fields(check_reply(line))
    keys = ("files", "bytes", "servers_up", "servers_down", "under", "over",
            "repairs_queued", "repairs_running")
    return Status(**_ints(found, keys, line))


MOST_LINES = 100_000  # lines a reply asked for with no limit (SERVERS, HELP) may announce


def parse_count(line: str, most: Optional[int] = MOST_LINES) -> int:
    """``OK <n>``, the head of a multi-line reply: n, no more than ``most``
    (a LIST page's limit; None for no bound): a proxy announcing more is
    not believed, so that its lines cannot fill the client's memory."""
    words = check_reply(line).split()
    if len(words) != 2 or not digits(words[1]):
        raise ProtocolError(f"expected 'OK <n>', got {line[:200]!r}")
    count = int(words[1])
    if most is not None and count > most:
        raise ProtocolError(f"the proxy announced {count} lines, more than the {most} asked for")
    return count


def parse_deleted(line: str) -> str:
    """``OK deleted name=..``: the name."""
    return text_field(_fields(check_reply(line)), "name", line)


# ---------------------------------------------------------------- request lines


def put_line(name: str, size: int, replicas: Optional[int] = None) -> str:
    """The PUT request line; BadArgs for a name or count the proxy would refuse."""
    check_name(name)
    if size < 0:
        raise BadArgs("size must not be negative")
    if replicas is not None and not 1 <= replicas <= 16:
        raise BadArgs("replicas must be 1 to 16")
    return f"PUT {quote(name)} {size}" + (f" {replicas}" if replicas is not None else "")


def name_line(command: str, name: str) -> str:
    """``COMMAND <name>``, BadArgs for an invalid name."""
    return f"{command} {quote(check_name(name))}"


def list_line(prefix: str = "", after: str = "", limit: Optional[int] = None) -> str:
    """The LIST request line: names starting with ``prefix`` that sort after
    ``after``, at most ``limit`` (None: all). BadArgs for words the proxy
    would refuse or a line could not carry."""
    for word in (prefix, after):
        if word:
            check_name(word)
    if limit is None and not after:
        return f"LIST {quote(prefix)}" if prefix else "LIST"
    line = f"LIST {quote(prefix)} {quote(after)}"
    if limit is None:
        return line
    if limit < 1:
        raise BadArgs("limit must be at least 1")
    return f"{line} {limit}"


def replicas_line(name: str, count: int, wait: bool = False) -> str:
    if count < 0:
        raise BadArgs("count must not be negative")
    return f"REPLICAS {quote(check_name(name))} {count}" + (" WAIT" if wait else "")


def auth_line(token: str) -> str:
    """The AUTH request line; BadArgs unless the token is one non-empty line."""
    if not token or any(c in token for c in "\r\n"):
        raise BadArgs("a token is one non-empty line")
    return f"AUTH {quote(token)}"


def encode(line: str) -> bytes:
    """A request line on the wire."""
    return line.encode("utf-8") + b"\n"


def decode(raw: bytes) -> str:
    """A reply line from the wire, its CR stripped."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "replace")

