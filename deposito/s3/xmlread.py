"""The three request bodies the S3 gateway reads: DeleteObjects,
CompleteMultipartUpload and CreateBucket (the documents it answers with are
in deposito.s3.xmlwire).

Bodies are parsed with defusedxml (no DTD, no entities, no external
references) and any fault, whatever its cause, is ``S3Error("MalformedXML")``.
The gateway bounds a body before it is parsed, reading at most the limits
below; the parsers refuse anything longer too.
"""

from __future__ import annotations

import re
from typing import Optional
from xml.etree.ElementTree import Element, ParseError

import attrs
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from deposito.s3.errors import UNSERVED_CONDITION, S3Error
from deposito.s3.xmlwire import CHECKSUM_ELEMENTS

# Body limits the gateway reads up to. A DeleteObjects names at most 1000 keys
# of at most 1024 bytes, each byte at most 6 bytes once escaped, plus ~100 of
# markup: under 7 MiB. A CompleteMultipartUpload lists at most 10000 parts of
# ~400 bytes with their checksums: under 4 MiB.
DELETE_BODY_LIMIT = 8 * 1024 * 1024
COMPLETE_BODY_LIMIT = 4 * 1024 * 1024
CREATE_BUCKET_BODY_LIMIT = 64 * 1024

MAX_DELETE_KEYS = 1000
MAX_PART_NUMBER = 10000

# Elements a request may hold, at most, counted before it is parsed (parsing
# runs on the reactor: a body of many tiny elements must not hold it long).
# An Object of DeleteObjects has at most Key, VersionId, ETag, Size and
# LastModifiedTime; a Part, PartNumber, ETag and the five checksums.
DELETE_ELEMENTS = 2 + 6 * MAX_DELETE_KEYS
COMPLETE_ELEMENTS = 1 + 8 * MAX_PART_NUMBER


@attrs.frozen
class ObjectToDelete:
    key: str
    version_id: Optional[str] = None
    etag: Optional[str] = None  # deleted only if its ETag is this one


def _parse(body: bytes, root: str, limit: int, elements: int = 64) -> Element:
    """The document's root element, if it is well-formed, plain, named
    ``root`` and of ``elements`` elements at most (each takes a tag or two,
    and the XML declaration one more)."""
    if len(body) > limit or body.count(b"<") > 2 * elements + 1:
        raise S3Error("MalformedXML")
    try:
        document = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ParseError, DefusedXmlException, ValueError, LookupError):
        raise S3Error("MalformedXML") from None
    if _name(document) != root:
        raise S3Error("MalformedXML")
    return document


def _name(node: Element) -> str:
    """A tag without its namespace: clients send S3's namespace, or none."""
    return node.tag.rpartition("}")[2] if isinstance(node.tag, str) else ""


def _children(node: Element, name: str) -> list[Element]:
    return [child for child in node if _name(child) == name]


def _only(node: Element, name: str) -> Optional[Element]:
    """The one child called ``name``, or None; twice is malformed."""
    found = _children(node, name)
    if len(found) > 1:
        raise S3Error("MalformedXML")
    return found[0] if found else None


def _text(node: Element, name: str) -> Optional[str]:
    child = _only(node, name)
    return None if child is None else (child.text or "")


def parse_delete(body: bytes) -> tuple[list[ObjectToDelete], bool]:
    """DeleteObjects' request: the keys (1 to 1000, each with its VersionId
    and ETag if given), in the order sent, and whether the client asked for quiet mode."""
    document = _parse(body, "Delete", DELETE_BODY_LIMIT, DELETE_ELEMENTS)
    quiet_text = _text(document, "Quiet")
    quiet = (quiet_text or "false").strip().lower()
    if quiet not in ("true", "false"):
        raise S3Error("MalformedXML")
    objects = _children(document, "Object")
    if not 1 <= len(objects) <= MAX_DELETE_KEYS:
        raise S3Error("MalformedXML")
    keys = []
    for entry in objects:
        key = _text(entry, "Key")
        if not key:
            raise S3Error("MalformedXML")
        if _text(entry, "Size") is not None or _text(entry, "LastModifiedTime") is not None:
            raise S3Error("NotImplemented", UNSERVED_CONDITION)
        keys.append(ObjectToDelete(key, _text(entry, "VersionId"), _text(entry, "ETag")))
    return keys, quiet == "true"


_PART_NUMBER = re.compile(r"[0-9]{1,6}")


def parse_complete_multipart(body: bytes) -> list[tuple[int, str, dict[str, str]]]:
    """CompleteMultipartUpload's request: (part number, ETag without quotes,
    the checksums given with the part by algorithm), in order.

    Part numbers must be 1 to 10000 (else InvalidArgument, S3's answer to a
    part number out of range) and ascending (else InvalidPartOrder); of a
    number given twice in a row, the later entry is kept.
    Checksums given with a part are not read here.
    """
    document = _parse(body, "CompleteMultipartUpload", COMPLETE_BODY_LIMIT, COMPLETE_ELEMENTS)
    parts: list[tuple[int, str, dict[str, str]]] = []
    for entry in _children(document, "Part"):
        number_text = (_text(entry, "PartNumber") or "").strip()
        etag = _text(entry, "ETag")
        if not _PART_NUMBER.fullmatch(number_text) or etag is None:
            raise S3Error("MalformedXML")
        number = int(number_text)
        if not 1 <= number <= MAX_PART_NUMBER:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                          ArgumentName="partNumber", ArgumentValue=number_text)
        if parts and number < parts[-1][0]:
            raise S3Error("InvalidPartOrder")
        etag = etag.strip()
        if parts and number == parts[-1][0]:
            parts.pop()  # a part named twice (sent twice): the later entry stands, as S3 takes it
        sums = {}
        for algorithm, name in CHECKSUM_ELEMENTS.items():
            given = _text(entry, name)
            if given is not None:
                sums[algorithm] = given.strip()
        parts.append((number, etag[1:-1] if len(etag) >= 2 and etag[0] == etag[-1] == '"' else etag, sums))
    if not parts:
        raise S3Error("MalformedXML")
    return parts


def parse_create_bucket(body: bytes) -> Optional[str]:
    """CreateBucket's request: the LocationConstraint asked, or None (an empty body is allowed)."""
    if not body.strip():
        return None
    document = _parse(body, "CreateBucketConfiguration", CREATE_BUCKET_BODY_LIMIT)
    location = _text(document, "LocationConstraint")
    return location.strip() or None if location is not None else None
