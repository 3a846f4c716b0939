"""What S3 keeps with an object's version, in the catalog's ``meta`` text
(see FileRecord.meta), and the names S3 gives to depot files.

The object KEY of bucket B is the depot file ``B/KEY``. Its ETag (the hex
MD5 of its bytes), Content-Type, user metadata (``x-amz-meta-*``) and the
``x-amz-checksum-*`` its body was verified against are one compact JSON
object committed with the version. A file stored through
another interface has none: its ETag is then made from its SHA-256 with a
``-1`` suffix, the form S3 tools know not to compare with an MD5.
"""

from __future__ import annotations

import base64
import email.errors
import email.header
import json
import re
from typing import Optional

import attrs

from deposito.catalog import FileRecord
from deposito.errors import BadArgs
from deposito.protocols.words import MAX_META_BYTES, check_name, digits
from deposito.s3 import xmlwire
from deposito.s3.errors import S3Error

DEFAULT_TYPE = "binary/octet-stream"
OWNER = xmlwire.Owner("deposito", "deposito")  # every object's and bucket's, for listings (ACLs are not served)
# Headers of a PutObject kept with the object and sent back with it, as S3 does.
KEPT_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
MAX_USER_META = 2048  # bytes of user metadata, names and values, as S3 allows

# What the checksums of a body may add to its metadata at most: one of each algorithm, at its length in base64.
ROOM_FOR_CHECKSUMS = {"crc32": "0" * 8, "crc32c": "0" * 8, "crc64nvme": "0" * 12, "sha1": "0" * 28, "sha256": "0" * 44}

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_IP = re.compile(r"\d+\.\d+\.\d+\.\d+\Z")


@attrs.frozen
class ObjectMeta:
    etag: str  # without quotes
    content_type: str = DEFAULT_TYPE
    user: dict[str, str] = attrs.field(factory=dict)
    headers: dict[str, str] = attrs.field(factory=dict)  # those of KEPT_HEADERS given
    # x-amz-checksum-* verified when the bytes came, by algorithm ("crc32": base64 of the digest), or
    # of an object made of parts, that of its parts' (see checksums.of_parts)
    checksums: dict[str, str] = attrs.field(factory=dict)
    checksum_type: str = ""  # how those of an object made of parts were made: COMPOSITE or FULL_OBJECT
    algorithm: str = ""  # of a multipart upload under way: the checksum each part must come with

    def to_text(self) -> str:
        kept: dict[str, object] = {"etag": self.etag, "type": self.content_type, "user": self.user}
        if self.headers:
            kept["headers"] = self.headers
        if self.checksums:
            kept["sums"] = self.checksums
        if self.checksum_type:
            kept["sumtype"] = self.checksum_type
        if self.algorithm:
            kept["algorithm"] = self.algorithm
        return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def given(cls, headers: dict[str, list[str]]) -> ObjectMeta:
        """What a PutObject (or a copy replacing metadata) asks to keep; its ETag comes later."""
        user = user_metadata([(name, ",".join(values)) for name, values in headers.items()])
        kept = {name: ",".join(headers[name]) for name in KEPT_HEADERS if name in headers}
        if "content-encoding" in kept:  # aws-chunked tells how this request's body came, not the object
            codings = [c.strip() for c in kept.pop("content-encoding").split(",")]
            codings = [c for c in codings if c and c.lower() != "aws-chunked"]
            if codings:
                kept["content-encoding"] = ",".join(codings)
        meta = cls("", ",".join(headers.get("content-type", [])) or DEFAULT_TYPE, user, kept)
        largest = attrs.evolve(meta, etag="0" * 40, checksums=ROOM_FOR_CHECKSUMS)  # as it may be once its bytes came
        if len(largest.to_text().encode("utf-8")) > MAX_META_BYTES:
            raise S3Error("MetadataTooLarge", "The metadata and headers kept with an object must fit in"
                          f" {MAX_META_BYTES} bytes")  # it rides on each copy's blob (see BlobMeta.meta)
        return meta

    @classmethod
    def of(cls, record: FileRecord) -> ObjectMeta:
        """The S3 view of a record (one stored elsewhere: an ETag from its SHA-256)."""
        if record.meta:
            try:
                kept = json.loads(record.meta)
                return cls(str(kept["etag"]), str(kept.get("type") or DEFAULT_TYPE),
                           {str(k): str(v) for k, v in dict(kept.get("user") or {}).items()},
                           {str(k): str(v) for k, v in dict(kept.get("headers") or {}).items()},
                           {str(k): str(v) for k, v in dict(kept.get("sums") or {}).items()},
                           str(kept.get("sumtype") or ""), str(kept.get("algorithm") or ""))
            except (ValueError, KeyError, TypeError, AttributeError):
                pass  # not ours: as for a file stored elsewhere
        return cls(record.sha256[:32] + "-1")


# Names S3 keeps for itself (punycode hosts, its access points and aliases):
# no bucket may be created with them, so any other request to one finds no bucket.
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def check_bucket(name: str) -> str:
    """A bucket name by S3's rules, or InvalidBucketName."""
    if not _BUCKET.match(name) or ".." in name or ".-" in name or "-." in name or _IP.match(name):
        raise S3Error("InvalidBucketName", resource=name, BucketName=name)
    return name


def check_new_bucket(name: str) -> str:
    """A name a bucket may be created with: S3's rules, and none of the
    names S3 keeps for itself; else InvalidBucketName."""
    if name.startswith(_RESERVED_PREFIXES) or name.endswith(_RESERVED_SUFFIXES):
        raise S3Error("InvalidBucketName", resource=name, BucketName=name)
    return check_bucket(name)


def file_name(bucket: str, key: str) -> str:
    """The depot file of ``key`` in ``bucket``: KeyTooLongError, InvalidURI
    (a control character) or InvalidArgument for a key the depot cannot name."""
    if not key:
        raise S3Error("InvalidArgument", "An object key must not be empty")
    try:
        return check_name(f"{bucket}/{key}")
    except BadArgs as e:
        if "longer" in e.message:
            raise S3Error("KeyTooLongError") from None
        if "control character" in e.message:  # what S3 says of a key it cannot parse
            raise S3Error("InvalidURI") from None
        raise S3Error("InvalidArgument", f"The key cannot be stored: {e.message}") from None


def header_text(raw: bytes) -> str:
    """A request header's value as its sender signed it: UTF-8, as the AWS
    SDKs send it, else Latin-1 (Python's http.client sends a str so)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def mail_safe(value: str) -> bytes:
    """A metadata value as S3 sends it back: as it is when printable
    US-ASCII (tabs too), else as one RFC 2047 encoded word
    (``=?UTF-8?B?...?=``), so nothing is lost and no control byte (NUL, CR,
    LF: one given in an encoded word) goes into a header as it is."""
    if value.isascii() and all(c == "\t" or " " <= c <= "~" for c in value):
        return value.encode("ascii")
    return b"=?UTF-8?B?" + base64.b64encode(value.encode("utf-8")) + b"?="


def _unfold(value: str) -> str:
    """A metadata value given in RFC 2047 encoded words, decoded, as S3 stores it."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (email.errors.HeaderParseError, LookupError, ValueError):
        return value  # not encoded words after all: kept as given


def user_metadata(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The ``x-amz-meta-*`` headers (names lower-case, without the prefix,
    values decoded from RFC 2047 when so given); MetadataTooLarge past S3's 2 KiB."""
    user: dict[str, str] = {}
    for name, raw in headers:
        if name.startswith("x-amz-meta-") and len(name) > len("x-amz-meta-"):
            key = name[len("x-amz-meta-"):]
            value = _unfold(raw)
            user[key] = value if key not in user else user[key] + "," + value
    if sum(len(k.encode()) + len(v.encode()) for k, v in user.items()) > MAX_USER_META:
        raise S3Error("MetadataTooLarge")
    return user


def replicas_of(user: dict[str, str], most: int = 16) -> Optional[int]:
    """The copy count asked with ``x-amz-meta-replicas``, or None; InvalidArgument when not 1..most."""
    text = user.get("replicas")
    if text is None:
        return None
    text = text.strip()
    if not digits(text) or not 1 <= int(text) <= most:
        raise S3Error("InvalidArgument", f"x-amz-meta-replicas must be a whole number from 1 to {most}",
                      ArgumentName="x-amz-meta-replicas", ArgumentValue=text)
    return int(text)
