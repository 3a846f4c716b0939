"""What a body sent to the S3 API must prove, checked as it streams: its
SigV4 payload statement, Content-MD5 and ``x-amz-checksum-*``; and its MD5,
the object's ETag."""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Optional

from deposito.s3 import sigv4
from deposito.s3.checksums import Checksummer
from deposito.s3.chunked import ChunkedDecoder
from deposito.s3.errors import S3Error

if TYPE_CHECKING:
    from deposito.s3.gateway import Call


class BodyChecks:
    """Everything a PutObject's body must prove, checked as it streams: its
    SigV4 payload statement (a signed SHA-256, or aws-chunked signatures and
    trailing checksum), Content-MD5, an ``x-amz-checksum-*`` header; and its
    MD5, the object's ETag."""

    def __init__(self, call: Call, checksum_headers: bool = True) -> None:
        """``checksum_headers=False``: the request's x-amz-checksum-* headers
        are not its body's (a CompleteMultipartUpload's are its object's)."""
        verified = call.verified
        self.decoder = ChunkedDecoder(verified) if verified.payload in sigv4.STREAMING_MODES else None
        self.payload = sigv4.PayloadCheck(verified.content_sha256) if verified.payload == sigv4.SIGNED \
            and verified.content_sha256 else None
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.content_md5 = _content_md5(call.header("content-md5"))
        self.checksums: list[tuple[Checksummer, str]] = []
        for name, values in call.headers.items() if checksum_headers else ():
            checksummer = Checksummer.for_header(name)
            if checksummer is not None and name != verified.trailer:
                self.checksums.append((checksummer, ",".join(values).strip()))
            elif name.startswith("x-amz-checksum-") and name != "x-amz-checksum-algorithm" \
                    and name != "x-amz-checksum-type":
                raise S3Error("InvalidRequest", f"The checksum {name} is not supported")

    def feed(self, data: bytes) -> bytes:
        """The object's bytes these body bytes carry."""
        if self.payload is not None:
            self.payload.feed(data)
        if self.decoder is not None:
            data = self.decoder.feed(data)
        self.md5.update(data)
        for checksummer, _ in self.checksums:
            checksummer.update(data)
        return data

    def finish(self) -> str:
        """The ETag (hex MD5) once every check holds; S3Error else."""
        if self.payload is not None:
            self.payload.finish()
        if self.decoder is not None:
            self.decoder.finish()
        digest = self.md5.digest()
        if self.content_md5 is not None and digest != self.content_md5:
            raise S3Error("BadDigest")
        for checksummer, expected in self.checksums:
            if checksummer.digest_b64() != expected:
                raise S3Error("BadDigest", f"The {checksummer.algorithm.upper()} you specified did not match"
                              " the calculated checksum.")
        return digest.hex()

    def checksums_given(self) -> dict[str, str]:
        """The ``x-amz-checksum-*`` values given and verified (after finish), to be echoed back."""
        given = {"x-amz-checksum-" + checksummer.algorithm: value for checksummer, value in self.checksums}
        if self.decoder is not None:
            given.update(self.decoder.checksums)
        return given

    def checksums_verified(self) -> dict[str, str]:
        """The same by algorithm (``crc32``: its value): what the object keeps."""
        return {name.removeprefix("x-amz-checksum-"): value for name, value in self.checksums_given().items()}

    def check_whole(self, body: bytes) -> bytes:
        """For a small body read whole (DeleteObjects): what it carries (aws-chunked, decoded)."""
        data = self.feed(body)
        self.finish()
        return data


def _content_md5(text: Optional[str]) -> Optional[bytes]:
    if text is None:
        return None
    try:
        digest = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise S3Error("InvalidDigest") from None
    if len(digest) != 16:
        raise S3Error("InvalidDigest")
    return digest
