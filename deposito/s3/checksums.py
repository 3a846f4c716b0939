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

from deposito.s3.errors import S3Error

ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")
COMPOSITE, FULL_OBJECT = "COMPOSITE", "FULL_OBJECT"  # how an object made of parts has its checksum
_COMBINE = {"crc32": (crt_checksums.combine_crc32, 4), "crc32c": (crt_checksums.combine_crc32c, 4),
            "crc64nvme": (crt_checksums.combine_crc64nvme, 8)}


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


def upload_checksum(algorithm: str | None, kind: str | None) -> tuple[str, str]:
    """The checksum a CreateMultipartUpload asks of its object
    (x-amz-checksum-algorithm and x-amz-checksum-type), as S3 allows them:
    (algorithm, COMPOSITE or FULL_OBJECT), or ("", "") for none; S3Error else."""
    algorithm, kind = (algorithm or "").strip().lower(), (kind or "").strip().upper()
    if not algorithm:
        if kind:
            raise S3Error("InvalidRequest", "The x-amz-checksum-type header can only be used with the"
                          " x-amz-checksum-algorithm header.")
        return "", ""
    if algorithm not in ALGORITHMS:
        raise S3Error("InvalidRequest", f"Checksum algorithm {algorithm.upper()} is not supported.")
    kind = kind or (FULL_OBJECT if algorithm == "crc64nvme" else COMPOSITE)
    allowed = {FULL_OBJECT} if algorithm == "crc64nvme" else {COMPOSITE, FULL_OBJECT} if algorithm in _COMBINE \
        else {COMPOSITE}
    if kind not in allowed:
        raise S3Error("InvalidRequest", f"The {algorithm.upper()} checksum algorithm does not support the"
                      f" {kind} checksum type.")
    return algorithm, kind


def of_parts(algorithm: str, kind: str, parts: list[tuple[str, int]]) -> str:
    """The checksum of an object made of ``parts`` (each its checksum, base64,
    and its size), as S3 gives it: COMPOSITE, the algorithm over the parts'
    digests in order, with ``-N``; FULL_OBJECT, the CRC of all the bytes,
    combined from the parts' (the AWS Common Runtime's combine functions)."""
    digests = [base64.b64decode(value) for value, _ in parts]
    if kind == FULL_OBJECT:
        combine, size = _COMBINE[algorithm]
        value = int.from_bytes(digests[0], "big")
        for digest, (_, length) in zip(digests[1:], parts[1:]):
            value = combine(value, int.from_bytes(digest, "big"), length)
        return base64.b64encode(value.to_bytes(size, "big")).decode("ascii")
    whole = Checksummer(algorithm)
    for digest in digests:
        whole.update(digest)
    return f"{whole.digest_b64()}-{len(parts)}"
