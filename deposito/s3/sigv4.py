"""Server-side AWS Signature Version 4, as S3 checks it.

A request proves it holds an access key's secret either in its
``Authorization`` header or in its query string (a presigned URL). Both
forms sign a canonical request: the method, the path, the sorted query
parameters, the signed headers and a statement about the body (its SHA-256,
``UNSIGNED-PAYLOAD``, or one of the ``STREAMING-...`` forms whose chunks are
signed in turn). ``verify`` rebuilds that canonical request from what
arrived and compares signatures in constant time; what it returns tells the
gateway how the body is to be checked (``PayloadCheck`` for a signed body,
``chunked.ChunkedDecoder`` for ``aws-chunked`` ones).

Nothing here touches the network: strings and bytes in, a ``Verified`` or an
``S3Error`` out.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Union
from urllib.parse import quote, unquote_to_bytes

import attrs

from deposito.protocols.words import digits
from deposito.s3.errors import S3Error
from deposito.s3.keys import S3Keys

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_SKEW = 15 * 60  # seconds between a header-signed request's time and ours
MAX_EXPIRES = 7 * 24 * 3600  # the longest a presigned URL may live

# The statements a request can make about its body (x-amz-content-sha256).
SIGNED = "signed"  # a hex SHA-256 of the whole body
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_MODES = (STREAMING_SIGNED, STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED_TRAILER)

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_TIMESTAMP_FORM = re.compile(r"\d{8}T\d{6}Z\Z", re.ASCII)
_PRESIGN_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                   "X-Amz-SignedHeaders", "X-Amz-Signature")

Headers = Mapping[str, Union[str, Sequence[str]]]


def _denied(message: str = "Access Denied") -> S3Error:
    return S3Error("AccessDenied", message)


def _malformed(message: str) -> S3Error:
    return S3Error("AuthorizationHeaderMalformed", message)


def _query_error(message: str) -> S3Error:
    return S3Error("AuthorizationQueryParametersError", message)


def _mismatch() -> S3Error:
    return S3Error("SignatureDoesNotMatch",
                   "The request signature we calculated does not match the signature you provided.")


@attrs.frozen
class Verified:
    """A request whose signature holds, and what its body must still prove.

    ``payload`` is ``SIGNED`` (then ``content_sha256`` is the hex SHA-256 the
    body must have), ``UNSIGNED_PAYLOAD`` or one of ``STREAMING_MODES``. The
    signing key, scope, timestamp and seed signature are what the chunk
    signatures of a streaming body are chained from. ``decoded_length`` is
    ``x-amz-decoded-content-length`` and ``trailer`` the ``x-amz-trailer``
    name, when given.
    """

    access_key: str
    payload: str
    content_sha256: str | None
    signing_key: bytes = attrs.field(repr=False)
    scope: str
    timestamp: str
    seed_signature: str
    presigned: bool = False
    decoded_length: int | None = None
    trailer: str | None = None


@functools.lru_cache(maxsize=64)
def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """The key derived from a secret for one day, region and service (the
    last few kept: a client signs with the same one all day)."""
    key = _hmac(("AWS4" + secret).encode("utf-8"), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode("utf-8"), "sha256")


def sign(key: bytes, string_to_sign: str) -> str:
    return hmac.digest(key, string_to_sign.encode("utf-8"), "sha256").hex()


def same_signature(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii", "replace"))


def parse_query(raw_query: str) -> list[tuple[bytes, bytes]]:
    """The query's parameters, percent-decoded (``+`` is a space), in arrival order.

    The gateway reads its parameters through this too, so that what it acts
    on is what was signed.
    """
    params = []
    for piece in raw_query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        params.append((unquote_to_bytes(name.replace("+", " ")), unquote_to_bytes(value.replace("+", " "))))
    return params


def canonical_query(params: list[tuple[bytes, bytes]]) -> str:
    encoded = sorted((quote(name, safe="-_.~"), quote(value, safe="-_.~")) for name, value in params)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_paths(raw_path: str) -> list[str]:
    """The canonical URI S3 signs: each byte of the decoded path URI-encoded once, ``/`` kept.

    The path as sent is tried too when it differs, for clients that sign the
    path as they encoded it (botocore does) with an encoding of their own.
    """
    path = raw_path or "/"
    canonical = quote(unquote_to_bytes(path), safe="/~")
    return [canonical] if canonical == path else [canonical, path]


def _header(headers: Headers, name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return ",".join(value)


def _canonical_header_value(value: str | Sequence[str]) -> str:
    values = [value] if isinstance(value, str) else list(value)
    return ",".join(" ".join(v.split()) for v in values)


def _canonical_headers(headers: Headers, signed: list[str]) -> str:
    return "".join(f"{name}:{_canonical_header_value(headers.get(name, ''))}\n" for name in signed)


def _parse_timestamp(text: str) -> datetime.datetime | None:
    """``20261205T134501Z`` as a UTC time; None unless exactly so written."""
    if not _TIMESTAMP_FORM.match(text):
        return None
    try:
        return datetime.datetime(int(text[:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]),
                                 int(text[11:13]), int(text[13:15]), tzinfo=datetime.timezone.utc)
    except ValueError:  # no such day or time
        return None


def _request_time(headers: Headers) -> datetime.datetime:
    amz_date = _header(headers, "x-amz-date")
    if amz_date is not None:
        when = _parse_timestamp(amz_date.strip())
        if when is None:
            raise _denied("AWS authentication requires a valid Date or x-amz-date header")
        return when
    date = _header(headers, "date")
    if date is not None:
        try:
            parsed = email.utils.parsedate_to_datetime(date.strip())
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:  # "-0000" or "GMT": UTC
                parsed = parsed.replace(tzinfo=datetime.timezone.utc)
            try:
                return parsed.astimezone(datetime.timezone.utc)
            except OverflowError:  # past year 9999 in UTC
                pass
    raise _denied("AWS authentication requires a valid Date or x-amz-date header")


@attrs.frozen
class _Credential:
    access_key: str
    date: str
    region: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/s3/aws4_request"


def _parse_credential(text: str, error: Callable[[str], S3Error]) -> _Credential:
    parts = text.rsplit("/", 4)
    if len(parts) != 5 or not parts[0]:
        raise error(f"the Credential {text!r} is not <key>/<date>/<region>/s3/aws4_request")
    access_key, date, region, service, terminator = parts
    if not re.fullmatch(r"\d{8}", date):
        raise error(f"Invalid credential date {date!r}: it must be in yyyyMMdd form")
    if service != "s3":
        raise error(f"Invalid credential scope: the service is {service!r}, expected 's3'")
    if terminator != "aws4_request":
        raise error(f"Invalid credential scope: it ends with {terminator!r}, expected 'aws4_request'")
    if not region:
        raise error("Invalid credential scope: the region is empty")
    return _Credential(access_key, date, region)


def _parse_signed_headers(text: str, error: Callable[[str], S3Error]) -> list[str]:
    names = text.split(";")
    if not text or any(not n or n != n.strip().lower() for n in names):
        raise error(f"the SignedHeaders {text!r} are not lower-case names joined by ';'")
    if "host" not in names:
        raise error("the host header must be signed")
    return names


def _check_signature(method: str, raw_path: str, query: str, headers: Headers, signed: list[str],
                     payload_hash: str, timestamp: str, scope: str, key: bytes, given: str) -> None:
    """SignatureDoesNotMatch unless one of the request's canonical forms is signed by ``given``."""
    tail = "\n".join((query, _canonical_headers(headers, signed), ";".join(signed), payload_hash))
    ok = False
    for path in canonical_paths(raw_path):
        canonical = f"{method.upper()}\n{path}\n{tail}"
        string_to_sign = "\n".join((ALGORITHM, timestamp, scope,
                                    hashlib.sha256(canonical.encode("utf-8")).hexdigest()))
        ok |= same_signature(sign(key, string_to_sign), given)
    if not ok:
        raise _mismatch()


def _secret(keys: S3Keys, access_key: str) -> str:
    secret = keys.secret(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId",
                      "The AWS Access Key Id you provided does not exist in our records.")
    return secret


def _payload_mode(value: str) -> tuple[str, str | None]:
    if value in (UNSIGNED_PAYLOAD, *STREAMING_MODES):
        return value, None
    if _HEX64.match(value):
        return SIGNED, value
    raise S3Error("InvalidArgument",
                  "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, a STREAMING-... value or a hex SHA-256")


def verify(method: str, raw_path: str, raw_query: str, headers: Headers, keys: S3Keys, now: float,
           max_skew: int = MAX_SKEW) -> Verified:
    """Check a request's signature, by its Authorization header or as a presigned URL.

    ``raw_path`` and ``raw_query`` are as they arrived (still percent-encoded).
    ``headers`` maps lower-case names to their value, or to the list of their
    values in arrival order (joined with ``,`` as SigV4 does), each decoded
    from the wire as ISO-8859-1. ``now`` is POSIX time. Raises S3Error.
    """
    authorization = headers.get("authorization")
    if authorization is not None and not isinstance(authorization, str):
        if len(authorization) != 1:
            raise S3Error("InvalidArgument", "Only one Authorization header may be given")
        authorization = authorization[0]
    params = parse_query(raw_query)
    presigned = any(name == b"X-Amz-Algorithm" for name, _ in params)
    if authorization is not None and presigned:
        raise S3Error("InvalidArgument", "Only one auth mechanism allowed; "
                      "only the X-Amz-Algorithm query parameter or the Authorization header should be given")
    if authorization is not None:
        return _verify_header(method, raw_path, params, headers, authorization, keys, now, max_skew)
    if presigned:
        return _verify_presigned(method, raw_path, params, headers, keys, now, max_skew)
    raise _denied("Anonymous access is not allowed: sign the request with AWS Signature Version 4")


def _authorization_fields(authorization: str) -> dict[str, str]:
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise S3Error("InvalidRequest", "The authorization mechanism you have provided is not supported. "
                      "Please use AWS4-HMAC-SHA256.")
    fields = {}
    for part in rest.split(","):
        name, equals, value = part.strip().partition("=")
        if not equals:
            raise _malformed(f"the Authorization header's {part.strip()!r} is not name=value")
        if name in fields:
            raise _malformed(f"the Authorization header gives {name} twice")
        fields[name] = value
    for name in ("Credential", "SignedHeaders", "Signature"):
        if name not in fields:
            raise _malformed(f"the Authorization header has no {name}")
    return fields


def _unsigned_amz_headers(headers: Headers, signed: list[str]) -> list[str]:
    return sorted(name for name in headers if name.startswith("x-amz-") and name not in signed)


def _verify_header(method: str, raw_path: str, params: list[tuple[bytes, bytes]], headers: Headers,
                   authorization: str, keys: S3Keys, now: float, max_skew: int) -> Verified:
    fields = _authorization_fields(authorization)
    credential = _parse_credential(fields["Credential"], _malformed)
    signed = _parse_signed_headers(fields["SignedHeaders"], _malformed)
    signature = fields["Signature"]
    if not _HEX64.match(signature):
        raise _malformed("the Signature is not 64 lower-case hex digits")
    content_sha256 = _header(headers, "x-amz-content-sha256")
    if content_sha256 is None:
        raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    payload, expected_sha256 = _payload_mode(content_sha256.strip())
    unsigned = _unsigned_amz_headers(headers, signed)
    if unsigned:
        raise _denied("There were headers present in the request which were not signed: " + ", ".join(unsigned))
    secret = _secret(keys, credential.access_key)
    when = _request_time(headers)
    timestamp = when.strftime(_TIMESTAMP)
    if timestamp[:8] != credential.date:
        raise _malformed(f"Invalid credential date {credential.date}: it is not the date of the request, "
                         f"{timestamp[:8]}")
    if abs(when.timestamp() - now) > max_skew:
        raise S3Error("RequestTimeTooSkewed",
                      "The difference between the request time and the current time is too large.")
    key = signing_key(secret, credential.date, credential.region)
    _check_signature(method, raw_path, canonical_query(params), headers, signed, content_sha256.strip(),
                     timestamp, credential.scope, key, signature)
    return Verified(access_key=credential.access_key, payload=payload, content_sha256=expected_sha256,
                    signing_key=key, scope=credential.scope, timestamp=timestamp, seed_signature=signature,
                    decoded_length=_decoded_length(headers, payload), trailer=_trailer(headers, payload))


def _decoded_length(headers: Headers, payload: str) -> int | None:
    text = _header(headers, "x-amz-decoded-content-length")
    if text is None or payload not in STREAMING_MODES:
        return None
    text = text.strip()
    if not digits(text, 18):
        raise S3Error("InvalidArgument", "x-amz-decoded-content-length is not a length")
    return int(text)


def _trailer(headers: Headers, payload: str) -> str | None:
    text = _header(headers, "x-amz-trailer")
    if text is None or not text.strip():
        return None
    if payload not in (STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED_TRAILER):
        raise S3Error("InvalidRequest", "x-amz-trailer is given but the body is not sent with trailers")
    return text.strip().lower()


def _verify_presigned(method: str, raw_path: str, params: list[tuple[bytes, bytes]], headers: Headers,
                      keys: S3Keys, now: float, max_skew: int) -> Verified:
    values: dict[str, str] = {}
    for name, value in params:
        text = name.decode("utf-8", "replace")
        if text in _PRESIGN_PARAMS or text == "X-Amz-Content-Sha256":
            if text in values:
                raise _query_error(f"{text} is given twice")
            values[text] = value.decode("utf-8", "replace")
    missing = [name for name in _PRESIGN_PARAMS if name not in values]
    if missing:
        raise _query_error("Query-string authentication version 4 requires the X-Amz-Algorithm, "
                           "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders and "
                           "X-Amz-Expires parameters; missing: " + ", ".join(missing))
    if values["X-Amz-Algorithm"] != ALGORITHM:
        raise _query_error("X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
    credential = _parse_credential(values["X-Amz-Credential"], _query_error)
    signed = _parse_signed_headers(values["X-Amz-SignedHeaders"], _query_error)
    unsigned = _unsigned_amz_headers(headers, signed)  # else a URL to upload could be used to copy, say
    if unsigned:
        raise _denied("There were headers present in the request which were not signed: " + ", ".join(unsigned))
    signature = values["X-Amz-Signature"]
    if not _HEX64.match(signature):
        raise _query_error("X-Amz-Signature is not 64 lower-case hex digits")
    expires_text = values["X-Amz-Expires"]
    if not digits(expires_text, 9):
        raise _query_error("X-Amz-Expires should be a number")
    expires = int(expires_text)
    if expires > MAX_EXPIRES:
        raise _query_error("X-Amz-Expires must be less than a week (in seconds) that is 604800")
    when = _parse_timestamp(values["X-Amz-Date"])
    if when is None:
        raise _query_error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    timestamp = values["X-Amz-Date"]
    if timestamp[:8] != credential.date:
        raise _query_error(f"Invalid credential date {credential.date}: it is not the date of X-Amz-Date")
    content_sha256 = values.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    payload, expected_sha256 = _payload_mode(content_sha256)
    if payload in STREAMING_MODES:
        raise S3Error("InvalidRequest", "a presigned URL cannot send an aws-chunked body")
    secret = _secret(keys, credential.access_key)
    if now > when.timestamp() + expires:
        raise _denied("Request has expired")
    if when.timestamp() - now > max_skew:
        raise _denied("Request is not valid yet")
    key = signing_key(secret, credential.date, credential.region)
    query = canonical_query([(n, v) for n, v in params if n != b"X-Amz-Signature"])
    _check_signature(method, raw_path, query, headers, signed, content_sha256, timestamp, credential.scope,
                     key, signature)
    return Verified(access_key=credential.access_key, payload=payload, content_sha256=expected_sha256,
                    signing_key=key, scope=credential.scope, timestamp=timestamp, seed_signature=signature,
                    presigned=True)


class PayloadCheck:
    """The SHA-256 a signed body must have, checked as the body streams through."""

    def __init__(self, expected_sha256: str) -> None:
        self._expected = expected_sha256
        self._hash = hashlib.sha256()

    def feed(self, data: bytes) -> None:
        self._hash.update(data)

    def finish(self) -> None:
        """XAmzContentSHA256Mismatch when the body is not the one signed."""
        if not same_signature(self._hash.hexdigest(), self._expected):
            raise S3Error("XAmzContentSHA256Mismatch",
                          "The provided 'x-amz-content-sha256' header does not match what was computed.")
