"""The XML S3 speaks in the documents the gateway answers with (the
request bodies it reads are in deposito.s3.xmlread).

Every document is UTF-8 with S3's declaration; results carry S3's
namespace, error documents none, as S3 writes them. All text is escaped the
way S3 escapes it (``&amp; &lt; &gt; &quot; &apos;``, and a carriage return
as ``&#13;`` so that parsers do not turn it into a line feed). Characters that
XML 1.0 cannot carry at all (C0 controls other than tab, LF and CR; lone
surrogates; U+FFFE and U+FFFF) are written as U+FFFD, so a document is always
well-formed: Amazon S3 writes them as character references that XML 1.0
parsers refuse, which breaks a client's whole listing for one odd key. Depot
names have no control characters (CONTRACT.md 1), so this touches almost
nothing; a client that must see such keys exactly asks for
``EncodingType=url``, as boto3, the aws CLI and rclone do by default, and then
keys are percent-encoded (UTF-8, only ``/`` and RFC 3986's unreserved
characters left as they are) and lose nothing.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional, Sequence, Union
from urllib.parse import quote

import attrs

from deposito.s3.errors import S3Error

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"


Instant = Union[datetime, float]
"""A moment: an aware datetime (a naive one is taken as UTC) or POSIX seconds."""


@attrs.frozen
class Owner:
    id: str
    display_name: str


@attrs.frozen
class BucketEntry:
    name: str
    created: Instant


@attrs.frozen
class ObjectEntry:
    """One object in a listing; ``etag`` with or without its double quotes."""

    key: str
    last_modified: Instant
    etag: str
    size: int
    storage_class: str = "STANDARD"
    owner: Optional[Owner] = None


@attrs.frozen
class PartEntry:
    part_number: int
    last_modified: Instant
    etag: str
    size: int
    checksums: dict[str, str] = attrs.field(factory=dict)  # by algorithm, as ObjectMeta.checksums


@attrs.frozen
class UploadEntry:
    key: str
    upload_id: str
    initiated: Instant
    storage_class: str = "STANDARD"
    owner: Optional[Owner] = None


@attrs.frozen
class Deleted:
    key: str
    version_id: Optional[str] = None


@attrs.frozen
class DeleteFailure:
    """A key DeleteObjects could not delete, with the S3 code that says why."""

    key: str
    code: str
    message: str
    version_id: Optional[str] = None


# Writing.

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;",
                          "\r": "&#13;"})


def escape(text: str) -> str:
    """``text`` as XML character data, always well-formed (see the module's docstring)."""
    return _NOT_XML.sub("\ufffd", text).translate(_ESCAPES)


def url_encode(key: str) -> str:
    """A key as S3 writes it under ``EncodingType=url``: percent-encoded UTF-8."""
    return quote(key.encode("utf-8", "replace"), safe="/")


def timestamp(when: Instant) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``, as S3 writes every date."""
    if isinstance(when, datetime):
        moment = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
        milliseconds = moment.microsecond // 1000
    else:  # rounded, so that 1715938201.234 is not written .233
        seconds, milliseconds = divmod(round(when * 1000), 1000)
        moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{milliseconds:03d}Z"


def quoted(etag: str) -> str:
    """An ETag in double quotes, as S3 sends it in headers and documents."""
    return etag if len(etag) >= 2 and etag.startswith('"') and etag.endswith('"') else f'"{etag}"'


CHECKSUM_ELEMENTS = {"crc32": "ChecksumCRC32", "crc32c": "ChecksumCRC32C", "crc64nvme": "ChecksumCRC64NVME",
                     "sha1": "ChecksumSHA1", "sha256": "ChecksumSHA256"}


def checksum_elements(checksums: dict[str, str]) -> str:
    """``<ChecksumCRC32>...</ChecksumCRC32>`` and the like, of checksums by algorithm (see ObjectMeta.checksums)."""
    return "".join(element(name, checksums[algorithm]) for algorithm, name in CHECKSUM_ELEMENTS.items()
                   if algorithm in checksums)


def element(name: str, value: Union[str, int, bool, None]) -> str:
    """``<name>value</name>``, or nothing for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    else:
        text = escape(value)
    return f"<{name}>{text}</{name}>"


DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'  # how every document begins


def xml_document(root: str, parts: Iterable[str], namespace: bool = True) -> bytes:
    """The whole document: declaration, root (in S3's namespace if asked) and its parts."""
    attributes = f' xmlns="{NAMESPACE}"' if namespace else ""
    body = "".join(parts)
    return DECLARATION + f"<{root}{attributes}>{body}</{root}>".encode("utf-8")


def error_document(error: S3Error, request_id: str, host_id: Optional[str] = None) -> bytes:
    """The body S3 sends with an error: ``<Error>``, no namespace, the extras after the message."""
    parts = [element("Code", error.code), element("Message", error.message)]
    parts += [element(name, value) for name, value in error.extra.items()]
    parts += [element("Resource", error.resource), element("RequestId", request_id),
              element("HostId", host_id)]
    return xml_document("Error", parts, namespace=False)


def _owner(name: str, owner: Optional[Owner]) -> str:
    if owner is None:
        return ""
    return f"<{name}>{element('ID', owner.id)}{element('DisplayName', owner.display_name)}</{name}>"


def _as_is(key: str) -> str:
    return key


def _encoder(encoding_type: Optional[str]) -> Callable[[str], str]:
    """How keys, prefixes, delimiters and markers are written for ``encoding_type``."""
    if encoding_type not in (None, "url"):
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      ArgumentName="encoding-type", ArgumentValue=encoding_type)
    return url_encode if encoding_type == "url" else _as_is


def _maybe(encode: Callable[[str], str], value: Optional[str]) -> Optional[str]:
    return None if value is None else encode(value)


def _contents(entry: ObjectEntry, encode: Callable[[str], str]) -> str:
    return ("<Contents>" + element("Key", encode(entry.key))
            + element("LastModified", timestamp(entry.last_modified))
            + element("ETag", quoted(entry.etag)) + element("Size", entry.size)
            + _owner("Owner", entry.owner) + element("StorageClass", entry.storage_class) + "</Contents>")


def _common_prefixes(prefixes: Sequence[str], encode: Callable[[str], str]) -> list[str]:
    return [f"<CommonPrefixes>{element('Prefix', encode(prefix))}</CommonPrefixes>" for prefix in prefixes]


def list_buckets_result(owner: Owner, buckets: Sequence[BucketEntry], prefix: str | None = None,
                        continuation_token: str | None = None) -> bytes:
    """ListBuckets' answer: a page of buckets, and the token of the next one when there is more."""
    entries = "".join(f"<Bucket>{element('Name', bucket.name)}"
                      f"{element('CreationDate', timestamp(bucket.created))}</Bucket>" for bucket in buckets)
    return xml_document("ListAllMyBucketsResult", [
        _owner("Owner", owner), f"<Buckets>{entries}</Buckets>",
        element("ContinuationToken", continuation_token) if continuation_token is not None else "",
        element("Prefix", prefix) if prefix is not None else ""])


def list_objects_v2_result(
    bucket: str, contents: Sequence[ObjectEntry], common_prefixes: Sequence[str] = (), *,
    prefix: str = "", delimiter: Optional[str] = None, max_keys: int = 1000, is_truncated: bool = False,
    continuation_token: Optional[str] = None, next_continuation_token: Optional[str] = None,
    start_after: Optional[str] = None, encoding_type: Optional[str] = None,
) -> bytes:
    """ListObjectsV2's answer: one page of keys, then the prefixes a delimiter rolled up.

    Continuation tokens are written as given: the gateway makes them opaque
    and plain (base64url, say), so they need no encoding.
    """
    encode = _encoder(encoding_type)
    parts = [element("Name", bucket), element("Prefix", encode(prefix)),
             element("Delimiter", _maybe(encode, delimiter)), element("MaxKeys", max_keys),
             element("KeyCount", len(contents) + len(common_prefixes)),
             element("IsTruncated", is_truncated), element("EncodingType", encoding_type),
             element("ContinuationToken", continuation_token),
             element("NextContinuationToken", next_continuation_token),
             element("StartAfter", _maybe(encode, start_after))]
    parts += [_contents(entry, encode) for entry in contents]
    parts += _common_prefixes(common_prefixes, encode)
    return xml_document("ListBucketResult", parts)


def list_objects_result(
    bucket: str, contents: Sequence[ObjectEntry], common_prefixes: Sequence[str] = (), *,
    prefix: str = "", delimiter: Optional[str] = None, max_keys: int = 1000, is_truncated: bool = False,
    marker: str = "", next_marker: Optional[str] = None, encoding_type: Optional[str] = None,
) -> bytes:
    """ListObjects' (v1) answer. S3 gives ``NextMarker`` only when a delimiter is
    set and the page is truncated; the gateway may give it always, clients
    then use it rather than the last key. Its Prefix is written as given,
    encoded or not (S3 does so, and botocore decodes it only in version 2)."""
    encode = _encoder(encoding_type)
    parts = [element("Name", bucket), element("Prefix", prefix), element("Marker", encode(marker)),
             element("NextMarker", _maybe(encode, next_marker)), element("MaxKeys", max_keys),
             element("Delimiter", _maybe(encode, delimiter)), element("IsTruncated", is_truncated),
             element("EncodingType", encoding_type)]
    parts += [_contents(entry, encode) for entry in contents]
    parts += _common_prefixes(common_prefixes, encode)
    return xml_document("ListBucketResult", parts)


def list_versions_result(
    bucket: str, versions: Sequence[ObjectEntry], common_prefixes: Sequence[str] = (), *,
    prefix: str = "", delimiter: Optional[str] = None, max_keys: int = 1000, is_truncated: bool = False,
    key_marker: str = "", next_key_marker: Optional[str] = None, encoding_type: Optional[str] = None,
) -> bytes:
    """ListObjectVersions' answer where no object has more than one version:
    each object's, its VersionId ``null``, as S3 lists a bucket never versioned."""
    encode = _encoder(encoding_type)
    parts = [element("Name", bucket), element("Prefix", encode(prefix)), element("KeyMarker", encode(key_marker)),
             element("VersionIdMarker", ""), element("NextKeyMarker", _maybe(encode, next_key_marker)),
             element("NextVersionIdMarker", "null" if next_key_marker is not None else None),
             element("MaxKeys", max_keys), element("Delimiter", _maybe(encode, delimiter)),
             element("IsTruncated", is_truncated), element("EncodingType", encoding_type)]
    parts += ["<Version>" + element("Key", encode(entry.key)) + element("VersionId", "null")
              + element("IsLatest", True) + element("LastModified", timestamp(entry.last_modified))
              + element("ETag", quoted(entry.etag)) + element("Size", entry.size)
              + _owner("Owner", entry.owner) + element("StorageClass", entry.storage_class) + "</Version>"
              for entry in versions]
    parts += _common_prefixes(common_prefixes, encode)
    return xml_document("ListVersionsResult", parts)


def versioning_configuration() -> bytes:
    """GetBucketVersioning's answer for a bucket whose versioning was never turned on."""
    return xml_document("VersioningConfiguration", [])


def copy_object_result(etag: str, last_modified: Instant) -> bytes:
    """CopyObject's answer."""
    return xml_document("CopyObjectResult", [element("LastModified", timestamp(last_modified)),
                                             element("ETag", quoted(etag))])


def copy_part_result(etag: str, last_modified: Instant, checksums: Optional[dict[str, str]] = None) -> bytes:
    """UploadPartCopy's answer (with the part's checksum, when its upload asks for one)."""
    return xml_document("CopyPartResult", [element("LastModified", timestamp(last_modified)),
                                           element("ETag", quoted(etag)), checksum_elements(checksums or {})])


def initiate_multipart_upload_result(bucket: str, key: str, upload_id: str) -> bytes:
    """CreateMultipartUpload's answer."""
    return xml_document("InitiateMultipartUploadResult", [element("Bucket", bucket), element("Key", key),
                                                          element("UploadId", upload_id)])


def complete_multipart_upload_result(location: str, bucket: str, key: str, etag: str,
                                     checksums: Optional[dict[str, str]] = None, checksum_type: str = "") -> bytes:
    """CompleteMultipartUpload's answer; ``location`` is the object's URL."""
    return xml_document("CompleteMultipartUploadResult", [
        element("Location", location), element("Bucket", bucket), element("Key", key),
        element("ETag", quoted(etag)), checksum_elements(checksums or {}),
        element("ChecksumType", checksum_type if checksums else None)])


def list_parts_result(
    bucket: str, key: str, upload_id: str, parts: Sequence[PartEntry], *,
    part_number_marker: int = 0, next_part_number_marker: Optional[int] = None, max_parts: int = 1000,
    is_truncated: bool = False, owner: Optional[Owner] = None, storage_class: str = "STANDARD",
    checksum_algorithm: str = "", checksum_type: str = "",
) -> bytes:
    """ListParts' answer: the parts of an upload in progress, by part number."""
    body = [element("Bucket", bucket), element("Key", key), element("UploadId", upload_id),
            _owner("Initiator", owner), _owner("Owner", owner), element("StorageClass", storage_class),
            element("PartNumberMarker", part_number_marker),
            element("NextPartNumberMarker", next_part_number_marker), element("MaxParts", max_parts),
            element("IsTruncated", is_truncated), element("ChecksumAlgorithm", checksum_algorithm.upper() or None),
            element("ChecksumType", checksum_type or None)]
    body += ["<Part>" + element("PartNumber", part.part_number)
             + element("LastModified", timestamp(part.last_modified))
             + element("ETag", quoted(part.etag)) + element("Size", part.size) + checksum_elements(part.checksums)
             + "</Part>" for part in parts]
    return xml_document("ListPartsResult", body)


@attrs.frozen
class ObjectParts:
    """A page of a multipart object's parts, for GetObjectAttributes."""
    count: int  # the object's parts in all
    parts: Sequence[tuple[int, int, dict[str, str]]]  # (part number, size, checksums), by part number
    part_number_marker: int = 0
    next_part_number_marker: Optional[int] = None
    max_parts: int = 1000
    is_truncated: bool = False


def object_attributes_result(wanted: Sequence[str], etag: str, size: int, parts: Optional[ObjectParts],
                             checksums: dict[str, str], checksum_type: str = "FULL_OBJECT",
                             storage_class: str = "STANDARD") -> bytes:
    """GetObjectAttributes' answer: of the attributes ``wanted``, those the
    object has (ObjectParts only for an object made of parts; Checksum only
    for one whose body came with ``checksums``), in S3's order. The ETag is
    without quotes here, as S3 sends it."""
    body = [element("ETag", etag if "ETag" in wanted else None)]
    if checksums and "Checksum" in wanted:
        body.append("<Checksum>" + checksum_elements(checksums) + element("ChecksumType", checksum_type)
                    + "</Checksum>")
    if parts is not None and "ObjectParts" in wanted:
        body.append("<ObjectParts>" + element("PartsCount", parts.count)
                    + element("PartNumberMarker", parts.part_number_marker)
                    + element("NextPartNumberMarker", parts.next_part_number_marker)
                    + element("MaxParts", parts.max_parts) + element("IsTruncated", parts.is_truncated)
                    + "".join("<Part>" + checksum_elements(sums) + element("PartNumber", number)
                              + element("Size", part_size) + "</Part>" for number, part_size, sums in parts.parts)
                    + "</ObjectParts>")
    body += [element("StorageClass", storage_class if "StorageClass" in wanted else None),
             element("ObjectSize", size if "ObjectSize" in wanted else None)]
    return xml_document("GetObjectAttributesResponse", body)


def list_multipart_uploads_result(
    bucket: str, uploads: Sequence[UploadEntry], common_prefixes: Sequence[str] = (), *,
    prefix: str = "", delimiter: Optional[str] = None, key_marker: str = "", upload_id_marker: str = "",
    next_key_marker: Optional[str] = None, next_upload_id_marker: Optional[str] = None,
    max_uploads: int = 1000, is_truncated: bool = False, encoding_type: Optional[str] = None,
) -> bytes:
    """ListMultipartUploads' answer: uploads in progress, by key then by start."""
    encode = _encoder(encoding_type)
    body = [element("Bucket", bucket), element("KeyMarker", encode(key_marker)),
            element("UploadIdMarker", upload_id_marker),
            element("NextKeyMarker", _maybe(encode, next_key_marker)),
            element("NextUploadIdMarker", next_upload_id_marker),
            element("Delimiter", _maybe(encode, delimiter)), element("Prefix", encode(prefix)),
            element("MaxUploads", max_uploads), element("IsTruncated", is_truncated),
            element("EncodingType", encoding_type)]
    body += ["<Upload>" + element("Key", encode(upload.key)) + element("UploadId", upload.upload_id)
             + _owner("Initiator", upload.owner) + _owner("Owner", upload.owner)
             + element("StorageClass", upload.storage_class)
             + element("Initiated", timestamp(upload.initiated)) + "</Upload>" for upload in uploads]
    body += _common_prefixes(common_prefixes, encode)
    return xml_document("ListMultipartUploadsResult", body)


def delete_result(deleted: Sequence[Deleted], failures: Sequence[DeleteFailure], quiet: bool = False) -> bytes:
    """DeleteObjects' answer. In quiet mode S3 reports only the keys it failed to delete."""
    body = [] if quiet else [
        "<Deleted>" + element("Key", entry.key) + element("VersionId", entry.version_id) + "</Deleted>"
        for entry in deleted]
    body += ["<Error>" + element("Key", failure.key) + element("VersionId", failure.version_id)
             + element("Code", failure.code) + element("Message", failure.message) + "</Error>"
             for failure in failures]
    return xml_document("DeleteResult", body)


def location_constraint(location: Optional[str]) -> bytes:
    """GetBucketLocation's answer; empty for the default region, as S3 answers for us-east-1."""
    return xml_document("LocationConstraint", [escape(location or "")])
