"""The conditional headers of S3's reads and copies (If-Match,
If-None-Match, If-Modified-Since, If-Unmodified-Since, and their
x-amz-copy-source- forms), and HTTP dates."""

from __future__ import annotations

import email.utils
from typing import TYPE_CHECKING, Optional

from deposito.s3.errors import S3Error

if TYPE_CHECKING:
    from deposito.s3.gateway import Call


def http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)


def parse_date(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def etag_in(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or etag.strip('"') in tags


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
    if (if_match is not None and not etag_in(if_match, etag)) \
            or (if_none is not None and etag_in(if_none, etag)) \
            or (unmodified_since is not None and modified > unmodified_since) \
            or (modified_since is not None and modified <= modified_since):
        raise S3Error("PreconditionFailed")
