"""The ``aws-chunked`` body of a streaming S3 upload, decoded as it arrives.

Each chunk is ``<hex-size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n``; a
zero-size chunk ends the data, and trailers may follow
(``x-amz-checksum-<algorithm>:<base64>``, and ``x-amz-trailer-signature``
when they are signed), then an empty line. In the signed modes each chunk's
signature chains from the previous one, starting at the request's seed
signature, so no chunk can be altered, dropped or reordered.

The decoder streams: it keeps at most one chunk header or the trailer
section, never a chunk's data, and hands data on as it comes. That data is
provisional until ``finish`` returns: a chunk's signature is checked when the
chunk ends, the checksum at the trailer, and the gateway must store nothing
for a body that fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from deposito.s3.checksums import Checksummer
from deposito.s3.sigv4 import (
    EMPTY_SHA256,
    STREAMING_MODES,
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    S3Error,
    Verified,
    same_signature,
    sign,
)

MAX_CHUNK_HEADER = 4096
MAX_TRAILERS = 16 * 1024

_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)
_SIGNATURE = re.compile(rb"chunk-signature=([0-9a-f]{64})\Z")
_HEX_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}\Z")


def _malformed(message: str) -> S3Error:
    return S3Error("InvalidRequest", f"Malformed aws-chunked body: {message}")


def _incomplete() -> S3Error:
    return S3Error("IncompleteBody", "The request body terminated unexpectedly")


def _chunk_mismatch() -> S3Error:
    return S3Error("SignatureDoesNotMatch",
                   "The chunk signature we calculated does not match the signature you provided.")


class ChunkedDecoder:
    """Decodes and checks one ``aws-chunked`` body: ``feed`` the bytes as they come, then ``finish``.

    After ``finish``, ``checksums`` maps each verified trailer (such as
    ``x-amz-checksum-crc32``) to its base64 value, and ``length`` is the
    number of decoded bytes.
    """

    def __init__(self, verified: Verified) -> None:
        if verified.payload not in STREAMING_MODES:
            raise ValueError(f"{verified.payload} is not an aws-chunked mode")
        self._verified = verified
        self._signed = verified.payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
        self._with_trailers = verified.payload in (STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED_TRAILER)
        self._checksum: Checksummer | None = None
        if verified.trailer is not None:
            self._checksum = Checksummer.for_header(verified.trailer)
            if self._checksum is None:
                raise S3Error("InvalidRequest", f"The trailer {verified.trailer} is not supported")
        self._previous = verified.seed_signature
        self._state = _SIZE
        self._buffer = bytearray()
        self._remaining = 0
        self._chunk_hash = hashlib.sha256()
        self._chunk_signature = ""
        self._trailers: list[tuple[str, str]] = []
        self._trailer_signature: str | None = None
        self._trailer_size = 0
        self.length = 0
        self.checksums: dict[str, str] = {}

    def feed(self, data: bytes) -> bytes:
        """The decoded bytes these bytes carry (perhaps none). Raises S3Error."""
        out: list[bytes] = []
        view = data
        position = 0
        while position < len(view):
            if self._state == _DATA:
                piece = view[position:position + self._remaining]
                position += len(piece)
                self._take(piece)
                out.append(piece)
            elif self._state == _DATA_END:
                position = self._read_data_end(view, position)
            elif self._state in (_SIZE, _TRAILERS):
                position = self._read_line(view, position)
            else:
                raise _malformed("bytes after the end of the body")
        return b"".join(out)

    def finish(self) -> None:
        """S3Error unless the whole body arrived and every signature and checksum in it holds."""
        if self._state == _TRAILERS and not self._buffer:
            self._end_trailers()  # some clients leave out the final empty line
        if self._state != _DONE:
            raise _incomplete()

    def _take(self, piece: bytes) -> None:
        self._remaining -= len(piece)
        self.length += len(piece)
        declared = self._verified.decoded_length
        if declared is not None and self.length > declared:
            raise S3Error("InvalidRequest", "The body holds more bytes than x-amz-decoded-content-length")
        if self._signed:
            self._chunk_hash.update(piece)
        if self._checksum is not None:
            self._checksum.update(piece)
        if self._remaining == 0:
            self._state = _DATA_END

    def _read_data_end(self, view: bytes, position: int) -> int:
        wanted = 2 - len(self._buffer)
        self._buffer += view[position:position + wanted]
        position += min(wanted, len(view) - position)
        if len(self._buffer) == 2:
            if self._buffer != b"\r\n":
                raise _malformed("a chunk's data is not followed by CRLF")
            self._buffer.clear()
            self._end_chunk()
            self._state = _SIZE
        return position

    def _read_line(self, view: bytes, position: int) -> int:
        """Reads one CRLF-ended line (a chunk header or a trailer), bounded in length."""
        limit = MAX_CHUNK_HEADER if self._state == _SIZE else MAX_TRAILERS - self._trailer_size
        window = view[position:position + limit + 1 - len(self._buffer)]
        end = window.find(b"\n")
        taken = window if end < 0 else window[:end + 1]
        self._buffer += taken
        if len(self._buffer) > limit:
            raise _malformed("a chunk header is too long" if self._state == _SIZE else "the trailers are too long")
        position += len(taken)
        if end < 0:
            return position
        line = bytes(self._buffer)
        self._buffer.clear()
        if not line.endswith(b"\r\n"):
            raise _malformed("a line does not end with CRLF")
        if self._state == _SIZE:
            self._start_chunk(line[:-2])
        else:
            self._trailer_size += len(line)
            self._trailer_line(line[:-2])
        return position

    def _start_chunk(self, header: bytes) -> None:
        size_text, _, extension = header.partition(b";")
        if not _HEX_SIZE.match(size_text):
            raise _malformed(f"the chunk size {size_text[:32]!r} is not hex")
        size = int(size_text, 16)
        if self._signed:
            match = _SIGNATURE.match(extension)
            if match is None:
                raise _malformed("a chunk has no chunk-signature")
            self._chunk_signature = match.group(1).decode("ascii")
        self._chunk_hash = hashlib.sha256()
        if size:
            self._remaining = size
            self._state = _DATA
            return
        self._end_chunk()
        declared = self._verified.decoded_length
        if declared is not None and self.length != declared:
            raise _incomplete()
        self._state = _TRAILERS

    def _end_chunk(self) -> None:
        if not self._signed:
            return
        v = self._verified
        string_to_sign = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", v.timestamp, v.scope, self._previous,
                                    EMPTY_SHA256, self._chunk_hash.hexdigest()))
        expected = sign(v.signing_key, string_to_sign)
        if not same_signature(expected, self._chunk_signature):
            raise _chunk_mismatch()
        self._previous = expected

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._end_trailers()
            return
        name_bytes, colon, value_bytes = line.partition(b":")
        if not colon:
            raise _malformed("a trailer is not name:value")
        try:
            name = name_bytes.decode("ascii").strip().lower()
            value = value_bytes.decode("ascii").strip()
        except UnicodeDecodeError:
            raise _malformed("a trailer is not ASCII") from None
        if name == "x-amz-trailer-signature":
            if self._trailer_signature is not None:
                raise _malformed("x-amz-trailer-signature is given twice")
            self._trailer_signature = value
            return
        if not self._with_trailers or name != self._verified.trailer:
            raise S3Error("InvalidRequest", f"The trailer {name} was not declared in x-amz-trailer")
        if any(n == name for n, _ in self._trailers):
            raise _malformed(f"the trailer {name} is given twice")
        self._trailers.append((name, value))

    def _end_trailers(self) -> None:
        self._state = _DONE
        if self._verified.payload == STREAMING_SIGNED_TRAILER:
            self._check_trailer_signature()
        elif self._trailer_signature is not None:
            raise _malformed("x-amz-trailer-signature in a body whose trailers are not signed")
        if self._checksum is None:
            return
        name = f"x-amz-checksum-{self._checksum.algorithm}"
        given = dict(self._trailers).get(name)
        if given is None:
            raise S3Error("InvalidRequest", f"The trailer {name} declared in x-amz-trailer was not sent")
        expected = self._checksum.digest()
        try:
            decoded = base64.b64decode(given, validate=True)
        except binascii.Error:
            decoded = b""
        if len(decoded) != len(expected):
            raise S3Error("InvalidDigest", f"Value for {name} trailing header is invalid.")
        if decoded != expected:
            raise S3Error("BadDigest", f"The {name} you specified did not match the calculated checksum.")
        self.checksums[name] = given

    def _check_trailer_signature(self) -> None:
        if self._trailer_signature is None:
            raise _malformed("the trailers are not signed (no x-amz-trailer-signature)")
        v = self._verified
        canonical = "".join(f"{name}:{value}\n" for name, value in self._trailers)
        string_to_sign = "\n".join(("AWS4-HMAC-SHA256-TRAILER", v.timestamp, v.scope, self._previous,
                                    hashlib.sha256(canonical.encode("ascii")).hexdigest()))
        if not same_signature(sign(v.signing_key, string_to_sign), self._trailer_signature):
            raise S3Error("SignatureDoesNotMatch",
                          "The trailer signature we calculated does not match the signature you provided.")
