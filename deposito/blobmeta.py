"""What a blob is and how its bytes are checked: its metadata (kept
beside it on the server's disk, enough to rebuild a lost catalog) and the
checksum of each block, which the proxy and the server both keep over the
bytes they move, and a reader checks before a block is sent."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import attrs
import crc32c

BLOCK = 1 << 20  # each block of a blob has its own checksum, checked before it is sent
# Block checksum functions by name, kept in each blob's metadata. New blobs use
# CRC-32C (in hardware on x86 and ARM); blobs from before it have CRC-32.
CHECKSUMS = {"crc32c": crc32c.crc32c, "crc32": zlib.crc32}
NEW_CHECKSUM = "crc32c"


class Corrupt(Exception):
    """A blob's bytes do not match the checksums kept beside it."""


def check_block(meta: BlobMeta, index: int, data: bytes | memoryview) -> None:
    """Corrupt unless ``data`` is all of block ``index`` and matches its checksum."""
    expected = min(BLOCK, meta.size - index * BLOCK)
    if len(data) != expected:
        raise Corrupt(f"block {index} is {len(data)} bytes, expected {expected}")
    checksum = CHECKSUMS.get(meta.checksum)
    if checksum is None:
        raise Corrupt(f"unknown block checksum {meta.checksum!r}")
    if index >= len(meta.blocks) or checksum(data) != meta.blocks[index]:
        raise Corrupt(f"block {index} fails its checksum")


class BlockSums:
    """The checksum (CRC-32C) of each BLOCK of a stream, whatever pieces it
    arrives in.

    The proxy keeps one over the bytes it sends and a server one over the
    bytes it writes: equal digests mean the copy holds what was sent.
    """

    def __init__(self) -> None:
        self._sum = CHECKSUMS[NEW_CHECKSUM]
        self._done: list[int] = []
        self._crc = 0
        self._in_block = 0

    def update(self, data: bytes | memoryview) -> None:
        if self._in_block + len(data) < BLOCK:  # the common case: within one block
            self._crc = self._sum(data, self._crc)
            self._in_block += len(data)
            return
        view = memoryview(data)
        while view:
            part = view[: BLOCK - self._in_block]
            self._crc = self._sum(part, self._crc)
            self._in_block += len(part)
            if self._in_block == BLOCK:
                self._done.append(self._crc)
                self._crc, self._in_block = 0, 0
            view = view[len(part):]

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(self._done + ([self._crc] if self._in_block else []))

    def digest(self) -> str:
        return blocks_digest(self.blocks)


def blocks_digest(blocks: tuple[int, ...]) -> str:
    """One short hex string that stands for a list of block checksums."""
    return hashlib.sha256(struct.pack(f">{len(blocks)}I", *blocks)).hexdigest()[:32]


@attrs.frozen
class BlobMeta:
    """What a blob is, kept beside it on the server's disk."""

    blob: str
    name: str
    version: int
    size: int
    sha256: str
    replicas: int
    blocks: tuple[int, ...] = ()
    checksum: str = NEW_CHECKSUM  # which function made ``blocks``
    cached: bool = False  # this copy was written through the page cache, to be read from it
    meta: str = ""  # what a gateway keeps with the version (see FileRecord.meta), for a rebuild

    def to_json(self) -> bytes:
        # every field, as attrs.asdict gives them, without its cost (one of these per blob written)
        return json.dumps({field.name: getattr(self, field.name) for field in _FIELDS}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> BlobMeta:
        d = json.loads(raw)
        return cls(
            blob=d["blob"], name=d["name"], version=int(d["version"]),
            size=int(d["size"]), sha256=d["sha256"], replicas=int(d["replicas"]),
            blocks=tuple(int(b) for b in d.get("blocks", ())),
            checksum=d.get("checksum", "crc32"),
            cached=bool(d.get("cached", False)),
            meta=str(d.get("meta", "")),
        )


_FIELDS = attrs.fields(BlobMeta)
