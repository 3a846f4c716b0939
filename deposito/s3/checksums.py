"""The checksums S3 clients send with a body (``x-amz-checksum-<algorithm>``).

Each value is the base64 of the big-endian digest, as S3 gives and checks it.
Every algorithm comes from a maintained implementation: zlib, the crc32c
package, hashlib, and the AWS Common Runtime for CRC-64/NVME (what botocore
itself uses for it).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Callable

import crc32c
from awscrt import checksums as crt_checksums

ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


class _Crc:
    def __init__(self, function: Callable[[bytes, int], int], size: int) -> None:
        self._function = function
        self._size = size
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = self._function(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")


def _crc64nvme(data: bytes, value: int) -> int:
    return crt_checksums.crc64nvme(data, value) & 0xFFFFFFFFFFFFFFFF


class Checksummer:
    """An incremental checksum of one of S3's algorithms; ValueError for another."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm.lower()
        self._state: _Crc | hashlib._Hash
        if self.algorithm == "crc32":
            self._state = _Crc(zlib.crc32, 4)
        elif self.algorithm == "crc32c":
            self._state = _Crc(crc32c.crc32c, 4)
        elif self.algorithm == "crc64nvme":
            self._state = _Crc(_crc64nvme, 8)
        elif self.algorithm in ("sha1", "sha256"):
            self._state = hashlib.new(self.algorithm)
        else:
            raise ValueError(f"unknown checksum algorithm {algorithm!r}")

    @classmethod
    def for_header(cls, name: str) -> Checksummer | None:
        """The checksummer a header or trailer such as ``x-amz-checksum-crc32`` asks for, or None."""
        prefix = "x-amz-checksum-"
        name = name.lower()
        if not name.startswith(prefix) or name[len(prefix):] not in ALGORITHMS:
            return None
        return cls(name[len(prefix):])

    def update(self, data: bytes) -> None:
        self._state.update(data)

    def digest(self) -> bytes:
        return self._state.digest()

    def digest_b64(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")
