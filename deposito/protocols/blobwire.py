"""The blob protocol: a storage server's own port, spoken by the proxy.

Requests (one line each, words as in the text protocol):

    WRITE <blob> <size> <version> <replicas> <name> [cache]
        (``cache``: keep the blob in the page cache, as the copy reads go to
        first; other big blobs are written around it), then exactly <size>
        raw bytes, then ``END <sha256> <blocks>``, where <blocks> is the
        digest of the checksum (CRC-32C) of each 1 MiB block sent
        (blobmeta.BlockSums); reply ``OK stored <blob> sha256=<hex>`` once
        the blob is durable and its block checksums match <blocks>.
    READ <blob> <offset> [<length>]
        reply ``OK <count> size=<size>``, then <count> raw bytes: those from
        <offset> to the end, or the <length> bytes from <offset> on. Every
        block they touch is checked against its checksum first, whole, even
        where the range starts or ends within it. An offset past the end, or
        a range that ends past it, is an ERR (the connection stays usable).
    DELETE <blob> [<blob> ...]
        reply ``OK deleted=<n> absent=<m>``: how many were there and are
        gone, and how many were not there. The deletes are durable first.
    META <blob>
        reply ``OK version=<version> name=<name> age=<seconds>``: what the
        blob's metadata says it is a copy of, and how long ago its file was
        written; ``ERR notfound`` when it is not there (or its metadata
        cannot be read: it is moved aside, as a corrupt copy).
    WANT <blob> <replicas>
        reply ``OK`` once <replicas> is durably the wanted count in the
        blob's metadata (what a rebuild of the catalog reads), ``ERR
        notfound`` when the blob is not there.

Errors are ``ERR <code> <message>``, as on the client port. The server's
local port (deposito.protocols.handoff) speaks the same, plus KEY, OPEN and
SEND.

With a cluster secret, the server opens with ``HELLO <ns>``; the proxy answers
``AUTH <np> <hmac>`` and the server ``OK <hmac>``: both have proved they hold
the secret before any request (see deposito.secret).

This module holds what both ends share: the handshake's labels, the
ranges' words and the body's reply. The server's end is
deposito.protocols.blobserver, the proxy's deposito.protocols.blobclient.
"""

from __future__ import annotations

from deposito.errors import BadArgs, DepositoError
from deposito.protocols.words import parse_count

DELETES_PER_LINE = 200  # blob ids in one DELETE: 33 bytes each, well within a line (lines.MAX_LINE)
PROXY_PROOF = "proxy-blob"  # what the proxy's proof is made for (deposito.secret.proof)
SERVER_PROOF = "server-blob"


class ConnectionLost(DepositoError):
    code = "unavailable"


def range_request(command: str, blob: str, offset: int, length: int | None) -> str:
    """``READ``/``OPEN``'s line: from ``offset`` to the end, or ``length`` bytes."""
    return f"{command} {blob} {offset}" + ("" if length is None else f" {length}")


def parse_range(offset: str, length: str) -> tuple[int, int | None]:
    """The words of a READ/OPEN range (``length`` "": to the end), checked as numbers."""
    return parse_count(offset, "offset"), None if length == "" else parse_count(length, "length")


def range_end(offset: int, length: int | None, size: int) -> int:
    """Where a range of a blob of ``size`` bytes ends; BadArgs when it is not within the blob."""
    if offset > size:
        raise BadArgs("offset past the end")
    if length is None:
        return size
    if offset + length > size:
        raise BadArgs(f"bytes {offset} to {offset + length} asked of a blob of {size} bytes: past its end")
    return offset + length


def body_reply(count: int, size: int) -> str:
    """The reply that comes before ``count`` bytes of a blob of ``size`` bytes."""
    return f"OK {count} size={size}"


def body_count(reply: str) -> int:
    """The byte count of a :func:`body_reply`; ValueError when there is none."""
    words = reply.split()
    if len(words) < 2:
        raise ValueError("no byte count")
    return int(words[1])
