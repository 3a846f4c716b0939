"""S3's listings: of a bucket's keys, ListObjectsV2 and ListObjects (v1),
pages of objects and the CommonPrefixes a delimiter rolls them up to, read
from the catalog's listing (one snapshot per request); of the buckets,
ListBuckets, a page at a time."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Optional

import attrs

from deposito.catalog import FileRecord
from deposito.protocols.words import MAX_NAME_BYTES
from deposito.s3 import xmlwire
from deposito.s3.errors import S3Error
from deposito.s3.objects import OWNER, ObjectMeta

if TYPE_CHECKING:
    from deposito.s3.gateway import Call, Gateway

MAX_KEYS = 1000
MAX_BUCKETS = 10000  # buckets in one page of ListBuckets, as S3 allows
MAX_CHAR = "\U0010ffff"  # the highest character a name may hold


class Listings:
    """The listing operations of a Gateway (which routes them here)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def list_buckets(self, call: Call) -> None:
        p = call.params
        prefix, limit, token = p.get("prefix", ""), _most(p, "max-buckets", MAX_BUCKETS, least=1), p.get("continuation-token")
        rows = await self.gateway.depot.buckets(prefix, _read_token(token) if token else "", limit + 1)
        buckets = [xmlwire.BucketEntry(name, created) for name, created in rows[:limit]]
        body = xmlwire.list_buckets_result(OWNER, buckets, prefix=prefix or None,
                                           continuation_token=_token(buckets[-1].name) if len(rows) > limit else None)
        await self.gateway.send(call, 200, body)

    async def list_objects_v2(self, call: Call) -> None:
        p = call.params
        token, start_after = p.get("continuation-token"), p.get("start-after", "")
        page, common = await self._page_asked(call, _read_token(token) if token is not None else start_after)
        contents = page.contents if p.get("fetch-owner") == "true" else [
            attrs.evolve(entry, owner=None) for entry in page.contents]
        body = xmlwire.list_objects_v2_result(
            call.bucket, contents, page.prefixes, continuation_token=token,
            next_continuation_token=_token(page.resume) if page.truncated else None,
            start_after=start_after or None, **common)
        await self.gateway.send(call, 200, body)

    async def list_objects(self, call: Call) -> None:
        marker = call.params.get("marker", "")
        page, common = await self._page_asked(call, marker)
        body = xmlwire.list_objects_result(
            call.bucket, page.contents, page.prefixes, marker=marker,
            next_marker=page.last if page.truncated and common["delimiter"] else None, **common)
        await self.gateway.send(call, 200, body)

    async def list_versions(self, call: Call) -> None:
        """ListObjectVersions: no version but the current one is kept, so
        each object is listed once, its VersionId ``null``."""
        marker = call.params.get("key-marker", "")
        page, common = await self._page_asked(call, marker)
        body = xmlwire.list_versions_result(
            call.bucket, page.contents, page.prefixes, key_marker=marker,
            next_key_marker=page.last if page.truncated else None, **common)
        await self.gateway.send(call, 200, body)

    async def _page_asked(self, call: Call, after: str) -> tuple[Page, dict[str, Any]]:
        """The page of the bucket's keys after ``after`` that a listing
        request asks for, and what every listing answer repeats of the
        request (prefix, delimiter, max-keys, encoding) with whether the page
        is truncated."""
        p = call.params
        prefix, delimiter, max_keys = p.get("prefix", ""), p.get("delimiter") or None, _most(p, "max-keys", MAX_KEYS)
        await self.gateway.existing_bucket(call.bucket)
        page = await self.page(call.bucket, prefix, delimiter, after, max_keys)
        return page, {"prefix": prefix, "delimiter": delimiter, "max_keys": max_keys,
                      "is_truncated": page.truncated, "encoding_type": p.get("encoding-type")}

    async def page(self, bucket: str, prefix: str, delimiter: Optional[str], after: str, max_keys: int) -> Page:
        """A page of keys after ``after``: objects, and the common prefixes
        they roll up to. Names under a common prefix are skipped by listing
        again after it, so a page costs its keys, not the keys it hides."""
        base = bucket + "/"
        page = Page()
        while max_keys:
            want = max_keys - page.count + 1  # one more: is there a next page?
            listing = await self.gateway.depot.listing(base + prefix, base + after, min(want, 100) if delimiter else want)
            records = await listing.collect()
            skipped = False
            for record in records:
                key = record.name[len(base):]
                common = _common_prefix(key, prefix, delimiter)
                if page.count == max_keys:
                    page.truncated = True
                    return page
                if common is not None:
                    if common > after:
                        page.prefixes.append(common)
                        page.last = common
                    after = page.resume = _past(common)
                    skipped = True
                    break
                page.contents.append(_entry(key, record))
                after = page.last = page.resume = key
            if not skipped and len(records) < (min(want, 100) if delimiter else want):
                return page  # the listing ran out
        return page


@attrs.define
class Page:
    contents: list[xmlwire.ObjectEntry] = attrs.field(factory=list)
    prefixes: list[str] = attrs.field(factory=list)
    truncated: bool = False
    last: str = ""  # the last key or common prefix given
    resume: str = ""  # where the next page starts (after)

    @property
    def count(self) -> int:
        return len(self.contents) + len(self.prefixes)


def _most(params: dict[str, str], name: str, most: int, least: int = 0) -> int:
    """How many entries a page may hold, by parameter ``name`` (``max-keys``):
    at most ``most``; InvalidArgument below ``least``."""
    text = params.get(name, str(most))
    count = -1  # not a whole number
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        count = most if len(digits) > 9 else min(int(digits), most)  # int() refuses thousands of digits
    if count < least:
        raise S3Error("InvalidArgument", f"{name} must be a whole number" + (f" from {least}" if least else ""),
                      ArgumentName=name, ArgumentValue=text[:100])
    return count


def _past(prefix: str) -> str:
    """A string above every name that starts with ``prefix`` and below every
    other name above ``prefix``: ``prefix`` followed by the highest character
    more times than a name has room for. A listing goes on after it without
    reading the keys a common prefix rolls up."""
    return prefix + MAX_CHAR * (MAX_NAME_BYTES // len(MAX_CHAR.encode("utf-8")) + 1)


def _common_prefix(key: str, prefix: str, delimiter: Optional[str]) -> Optional[str]:
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return None if at < 0 else key[:at + len(delimiter)]


def _entry(key: str, record: FileRecord) -> xmlwire.ObjectEntry:
    return xmlwire.ObjectEntry(key, record.created, ObjectMeta.of(record).etag, record.size, owner=OWNER)


def _token(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode("utf-8")).decode("ascii")


def _read_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      ArgumentName="continuation-token") from None
