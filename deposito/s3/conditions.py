"""The conditional headers of S3's reads and copies (If-Match,
If-None-Match, If-Modified-Since, If-Unmodified-Since, and their
x-amz-copy-source- forms), of its conditional writes (If-Match and
If-None-Match on PutObject and CompleteMultipartUpload, If-Match on
DeleteObject), and HTTP dates."""

from __future__ import annotations

import email.utils
import functools
from typing import TYPE_CHECKING, Optional

from deposito.catalog import FileRecord
from deposito.catalog.records import Expect
from deposito.errors import NoVersion, Precondition
from deposito.s3.errors import S3Error
from deposito.s3.objects import ObjectMeta

if TYPE_CHECKING:
    from deposito.s3.gateway import Call


def http_date(when: float) -> str:
    return _http_date(int(when))


@functools.lru_cache(maxsize=256)  # the same few seconds over and over (Date, Last-Modified)
def _http_date(seconds: int) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def parse_date(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def etag_in(header: str, etag: str) -> bool:
    """Whether an If-Match-like header names ``etag`` (quoted or not, either side), or is ``*``."""
    tags = [t.strip().strip('"') for t in header.split(",")]
    return "*" in tags or etag.strip('"') in tags


def if_range_holds(header: Optional[str], etag: str, modified: int) -> bool:
    """Whether a Range may be honoured under ``If-Range`` (RFC 9110 13.1.5):
    no header, the current ETag compared strongly, or a date that is exactly
    the object's Last-Modified; anything else sends the whole object."""
    if header is None:
        return True
    header = header.strip()
    if header.startswith('"') or header.startswith("W/"):
        return header == etag
    when = parse_date(header)
    return when is not None and int(when) == modified


def check_conditions(call: Call, etag: str, modified: int) -> Optional[int]:
    """GET and HEAD's conditions, in S3's order: 412 raised, 304 returned, else None."""
    if_match, if_none = call.header("if-match"), call.header("if-none-match")
    unmodified_since, modified_since = parse_date(call.header("if-unmodified-since")), parse_date(
        call.header("if-modified-since"))
    if if_match is not None and not etag_in(if_match, etag):
        raise S3Error("PreconditionFailed", Condition="If-Match")
    if if_match is None and unmodified_since is not None and modified > unmodified_since:
        raise S3Error("PreconditionFailed", Condition="If-Unmodified-Since")
    if if_none is not None and etag_in(if_none, etag):
        return 304
    if if_none is None and modified_since is not None and modified <= modified_since:
        return 304
    return None


def check_copy_conditions(call: Call, etag: str, modified: int) -> None:
    if_match = call.header("x-amz-copy-source-if-match")
    if_none = call.header("x-amz-copy-source-if-none-match")
    unmodified_since = parse_date(call.header("x-amz-copy-source-if-unmodified-since"))
    modified_since = parse_date(call.header("x-amz-copy-source-if-modified-since"))
    # as for GET: a date is not asked when its ETag condition is given (S3 copies
    # when the source matches if-match, whatever its if-unmodified-since says)
    if (if_match is not None and not etag_in(if_match, etag)) \
            or (if_none is not None and etag_in(if_none, etag)) \
            or (if_match is None and unmodified_since is not None and modified > unmodified_since) \
            or (if_none is None and modified_since is not None and modified <= modified_since):
        raise S3Error("PreconditionFailed")


def write_condition(call: Call) -> Optional[Expect]:
    """A write's If-Match and If-None-Match, as a condition on the key's
    current version (see :data:`deposito.catalog.records.Expect`), or None
    without them. If-Match (an ETag, or ``*`` for any) needs a version:
    NoVersion (NoSuchKey) without one, Precondition (PreconditionFailed) when
    its ETag differs. If-None-Match (``*``, or an ETag) is Precondition when
    a version matches it."""
    if_match, if_none = call.header("if-match"), call.header("if-none-match")
    if if_match is None and if_none is None:
        return None

    def check(current: Optional[FileRecord]) -> None:
        if current is None:
            if if_match is not None:
                raise NoVersion("If-Match: there is no object to match")
            return
        etag = ObjectMeta.of(current).etag
        if if_match is not None and not etag_in(if_match, etag):
            raise Precondition("If-Match")
        if if_none is not None and etag_in(if_none, etag):
            raise Precondition("If-None-Match")
    return check


def delete_condition(if_match: Optional[str]) -> Optional[Expect]:
    """A delete's If-Match (DeleteObject's header, or the ETag of a
    DeleteObjects entry: an ETag, or ``*``), as a condition on the key's
    current version: Precondition (PreconditionFailed) when its ETag differs,
    NoVersion (NoSuchKey) when there is none, as S3 answers."""
    if if_match is None:
        return None

    def check(current: Optional[FileRecord]) -> None:
        if current is None:
            raise NoVersion("If-Match: there is no object to match")
        if not etag_in(if_match, ObjectMeta.of(current).etag):
            raise Precondition("If-Match")
    return check
