"""The S3 API against a real cluster (twistd processes), driven by boto3:
buckets, objects, listings, conditions and ranges, signatures, and hostile
input. One cluster serves the whole module."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import re
import socket
import time
import urllib.error
import urllib.request
import zlib
from urllib.parse import quote

import boto3
import pytest
from botocore.client import Config
from botocore.exceptions import ClientError

from tests.cluster import Cluster, Wire, free_port, poll

ACCESS, SECRET = "AKIADEPOSITOTEST0001", "s3cr3t/forTheTests+0123456789abcdefghijkl"
EMPTY = hashlib.sha256(b"").hexdigest()


class S3:
    def __init__(self, cluster: Cluster, port: int) -> None:
        self.cluster, self.port = cluster, port
        self.url = f"http://127.0.0.1:{port}"

    def client(self, secret: str = SECRET, access: str = ACCESS, **config):
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=access, aws_secret_access_key=secret,
                            region_name="us-east-1",
                            config=Config(**{"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 1},
                                             "signature_version": "s3v4", **config}))


MiB = 1 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3")
    keys = root / "s3-keys"
    keys.write_text(f"# the test's key\n{ACCESS} {SECRET}\n")
    port = free_port()
    cluster = Cluster(root, proxy_args=("--s3", f"tcp:{port}:interface=127.0.0.1", "--s3-keys", str(keys),
                                        "--s3-domain", "s3.test"))
    cluster.start(3)
    try:
        assert poll(lambda: _open(port), 10), "the S3 port did not open"
        yield S3(cluster, port)
    finally:
        cluster.stop()


def _open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def code(error: ClientError) -> str:
    return error.response["Error"]["Code"]


def test_a_bucket_is_made_listed_and_its_objects_round_trip(s3):
    c = s3.client()
    c.create_bucket(Bucket="photos")
    assert "photos" in [b["Name"] for b in c.list_buckets()["Buckets"]]
    data = os.urandom(300_000)
    put = c.put_object(Bucket="photos", Key="2024/cat.jpg", Body=data, ContentType="image/jpeg",
                       Metadata={"camera": "x100"})
    assert put["ETag"] == '"%s"' % hashlib.md5(data).hexdigest()
    got = c.get_object(Bucket="photos", Key="2024/cat.jpg")
    assert got["Body"].read() == data
    assert got["ContentType"] == "image/jpeg" and got["Metadata"] == {"camera": "x100"}
    assert got["ETag"] == put["ETag"] and got["ContentLength"] == len(data)
    with Wire(s3.cluster.port) as w:  # the same file through the text protocol
        reply, body = w.get("photos/2024/cat.jpg")
        assert reply.startswith("OK") and body == data


def test_buckets_are_listed_a_page_at_a_time(s3):
    c = s3.client()
    made = [f"paged-{i}" for i in range(5)]
    for name in made:
        c.create_bucket(Bucket=name)
    pages, token = [], None
    while True:
        reply = c.list_buckets(Prefix="paged-", MaxBuckets=2, **({"ContinuationToken": token} if token else {}))
        pages.append([b["Name"] for b in reply["Buckets"]])
        assert reply["Prefix"] == "paged-"
        token = reply.get("ContinuationToken")
        if token is None:
            break
    assert pages == [made[0:2], made[2:4], made[4:]]
    assert [b["Name"] for b in c.list_buckets(Prefix="paged-")["Buckets"]] == made  # no limit asked: all of them
    with pytest.raises(ClientError) as caught:
        c.list_buckets(ContinuationToken="not base64 at all!")
    assert code(caught.value) == "InvalidArgument"

    def none_asked(params, **_):  # boto3 itself refuses MaxBuckets=0
        params["url"] += ("&" if "?" in params["url"] else "?") + "max-buckets=0"

    c.meta.events.register("before-call.s3.ListBuckets", none_asked)
    with pytest.raises(ClientError) as caught:
        c.list_buckets()
    assert code(caught.value) == "InvalidArgument"
    c.meta.events.unregister("before-call.s3.ListBuckets", none_asked)
    for zeros, refused in (("000000000", True), ("0" * 40 + "2", False), ("٣", True)):
        def asked(params, zeros=zeros, **_):
            params["url"] += ("&" if "?" in params["url"] else "?") + "prefix=paged-&max-buckets=" + quote(zeros)

        c.meta.events.register("before-call.s3.ListBuckets", asked)
        try:
            if refused:
                with pytest.raises(ClientError) as caught:
                    c.list_buckets()
                assert code(caught.value) == "InvalidArgument", zeros
            else:
                assert [b["Name"] for b in c.list_buckets()["Buckets"]] == made[:2]
        finally:
            c.meta.events.unregister("before-call.s3.ListBuckets", asked)


def test_listings_page_through_every_key_once_with_common_prefixes(s3):
    c = s3.client()
    c.create_bucket(Bucket="tree")
    keys = [f"a/{i:02d}" for i in range(12)] + ["b/x/1", "b/y", "c", "c/d", "dé jà/vu"]
    for key in keys:
        c.put_object(Bucket="tree", Key=key, Body=key.encode())
    paged = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(
        Bucket="tree", PaginationConfig={"PageSize": 5}) for o in page.get("Contents", [])]
    assert paged == sorted(keys)
    v1 = [o["Key"] for page in c.get_paginator("list_objects").paginate(
        Bucket="tree", PaginationConfig={"PageSize": 4}) for o in page.get("Contents", [])]
    assert v1 == sorted(keys)
    top = c.list_objects_v2(Bucket="tree", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/", "c/", "dé jà/"]
    assert [o["Key"] for o in top["Contents"]] == ["c"]
    under_b = c.list_objects_v2(Bucket="tree", Prefix="b/", Delimiter="/")
    assert [p["Prefix"] for p in under_b["CommonPrefixes"]] == ["b/x/"]
    assert [o["Key"] for o in under_b["Contents"]] == ["b/y"]
    # a page of common prefixes goes on after the last one, never repeating it
    first = c.list_objects_v2(Bucket="tree", Delimiter="/", MaxKeys=2)
    assert first["IsTruncated"] and [p["Prefix"] for p in first["CommonPrefixes"]] == ["a/", "b/"]
    rest = c.list_objects_v2(Bucket="tree", Delimiter="/", ContinuationToken=first["NextContinuationToken"])
    assert [p["Prefix"] for p in rest.get("CommonPrefixes", [])] == ["c/", "dé jà/"]
    assert [o["Key"] for o in rest["Contents"]] == ["c"]
    after = c.list_objects_v2(Bucket="tree", StartAfter="b/y")
    assert [o["Key"] for o in after["Contents"]] == ["c", "c/d", "dé jà/vu"]
    v1_top = c.list_objects(Bucket="tree", Delimiter="/", MaxKeys=1)
    assert v1_top["IsTruncated"] and v1_top["NextMarker"] == "a/"
    assert c.list_objects_v2(Bucket="tree", Prefix="zzz")["KeyCount"] == 0


def test_ranges_and_conditions(s3):
    c = s3.client()
    c.create_bucket(Bucket="ranges")
    data = os.urandom(100_000)
    etag = c.put_object(Bucket="ranges", Key="f", Body=data)["ETag"]
    part = c.get_object(Bucket="ranges", Key="f", Range="bytes=1000-1999")
    assert part["Body"].read() == data[1000:2000] and part["ContentRange"] == f"bytes 1000-1999/{len(data)}"
    assert c.get_object(Bucket="ranges", Key="f", Range="bytes=-10")["Body"].read() == data[-10:]
    assert c.get_object(Bucket="ranges", Key="f", Range="bytes=99990-")["Body"].read() == data[99990:]
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="ranges", Key="f", Range="bytes=200000-")
    assert code(e.value) == "InvalidRange"
    assert c.get_object(Bucket="ranges", Key="f", IfMatch=etag)["Body"].read() == data
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="ranges", Key="f", IfMatch='"0123"')
    assert code(e.value) == "PreconditionFailed"
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="ranges", Key="f", IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="ranges", Key="f", IfModifiedSince=later)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    earlier = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="ranges", Key="f", IfUnmodifiedSince=earlier)
    assert code(e.value) == "PreconditionFailed"
    assert c.get_object(Bucket="ranges", Key="f", IfUnmodifiedSince=later)["Body"].read() == data
    assert c.get_object(Bucket="ranges", Key="f", IfModifiedSince=earlier)["Body"].read() == data
    head = c.head_object(Bucket="ranges", Key="f")
    assert head["ContentLength"] == len(data) and head["ETag"] == etag
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]


def test_a_range_under_if_range_of_another_version_gets_the_whole_object(s3):
    """A download resumed (If-Range: the ETag or date of what it holds) of
    an object replaced meanwhile: the whole new object, 200, as S3 and RFC
    9110 answer; it got the range, 206, and glued two versions together."""
    c = s3.client()
    c.create_bucket(Bucket="ifrange")
    old = c.put_object(Bucket="ifrange", Key="f", Body=b"a" * 100_000)
    modified = c.head_object(Bucket="ifrange", Key="f")["ResponseMetadata"]["HTTPHeaders"]["last-modified"]
    validator: list[str] = []

    def if_range(request, **kwargs):
        request.headers["If-Range"] = validator[0]

    c.meta.events.register("before-sign.s3.GetObject", if_range)
    validator.append(old["ETag"])
    got = c.get_object(Bucket="ifrange", Key="f", Range="bytes=50000-")
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206 and got["Body"].read() == b"a" * 50_000
    time.sleep(1.1)  # (a date names a second)
    new = os.urandom(100_000)
    c.put_object(Bucket="ifrange", Key="f", Body=new)
    for held in (old["ETag"], modified):
        validator[0] = held
        got = c.get_object(Bucket="ifrange", Key="f", Range="bytes=50000-")
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 200 and got["Body"].read() == new
        assert "ContentRange" not in got


def test_missing_things_and_bucket_rules(s3):
    c = s3.client()
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="nobucket", Key="x")
    assert code(e.value) == "NoSuchBucket"
    c.create_bucket(Bucket="rules")
    assert c.head_bucket(Bucket="rules")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert c.get_bucket_location(Bucket="rules").get("LocationConstraint") is None  # us-east-1
    with pytest.raises(ClientError) as e:
        c.get_bucket_location(Bucket="nobucket")
    assert code(e.value) == "NoSuchBucket"
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="rules", Key="nothing")
    assert code(e.value) == "NoSuchKey" and e.value.response["ResponseMetadata"]["RequestId"]
    with pytest.raises(ClientError) as e:
        c.head_object(Bucket="rules", Key="nothing")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as e:
        c.create_bucket(Bucket="rules")
    assert code(e.value) == "BucketAlreadyOwnedByYou"
    with pytest.raises(ClientError) as e:
        c.create_bucket(Bucket="Bad_Name")
    assert code(e.value) == "InvalidBucketName"
    for kept in ("xn--rules", "rules-s3alias", "rules--ol-s3", "sthree-rules"):  # names S3 keeps for itself
        with pytest.raises(ClientError) as e:
            c.create_bucket(Bucket=kept)
        assert code(e.value) == "InvalidBucketName", kept
        with pytest.raises(ClientError) as e:
            c.get_object(Bucket=kept, Key="x")
        assert code(e.value) == "NoSuchBucket", kept
    with pytest.raises(ClientError) as e:
        c.list_parts(Bucket="rules", Key="big", UploadId="0" * 32)
    assert code(e.value) == "NoSuchUpload"
    for key, error in (("a\x01b", "InvalidURI"), ("k" * 2000, "KeyTooLongError")):  # keys no file can have
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket="rules", Key=key, Body=b"x")
        assert code(e.value) == error and e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    c.put_object(Bucket="rules", Key="k", Body=b"x")
    with pytest.raises(ClientError) as e:
        c.delete_bucket(Bucket="rules")
    assert code(e.value) == "BucketNotEmpty"
    c.delete_object(Bucket="rules", Key="k")
    c.delete_object(Bucket="rules", Key="k")  # gone already: the same answer
    c.delete_bucket(Bucket="rules")
    with pytest.raises(ClientError) as e:
        c.head_bucket(Bucket="rules")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as e:
        c.create_multipart_upload(Bucket="rules", Key="big")
    assert code(e.value) == "NoSuchBucket"


def test_metadata_beyond_ascii_is_signed_stored_and_sent_back_mail_safe(s3):
    import email.header

    c = s3.client()
    c.create_bucket(Bucket="unicode")
    values = {"place": "café", "city": "東京", "plain": "ascii"}

    def raw_headers(params, **_):  # boto3's Metadata takes only ASCII; other clients send UTF-8 as it is
        params["headers"].update({f"x-amz-meta-{k}": v for k, v in values.items()})

    c.meta.events.register("before-call.s3.PutObject", raw_headers)
    c.put_object(Bucket="unicode", Key="k", Body=b"x")  # signed over the UTF-8 it is sent in
    c.meta.events.unregister("before-call.s3.PutObject", raw_headers)
    for got in (c.get_object(Bucket="unicode", Key="k")["Metadata"], c.head_object(Bucket="unicode", Key="k")["Metadata"]):
        assert got["plain"] == "ascii"
        assert got["place"] != "café" and got["place"].startswith("=?UTF-8?B?")  # S3's RFC 2047 words
        assert {k: str(email.header.make_header(email.header.decode_header(v))) for k, v in got.items()} == values
    # what S3 sent back, given again as it came, is stored as the same text: a copy keeps it
    sent = c.head_object(Bucket="unicode", Key="k")["Metadata"]
    c.copy_object(Bucket="unicode", Key="k2", CopySource="unicode/k", Metadata=sent, MetadataDirective="REPLACE")
    assert c.head_object(Bucket="unicode", Key="k2")["Metadata"] == sent


def test_metadata_past_its_bounds_is_refused_and_stores_nothing(s3):
    """User metadata over S3's 2 KiB, or metadata and kept headers together
    over the 3 KiB that ride on each copy's blob, are MetadataTooLarge."""
    c = s3.client()
    c.create_bucket(Bucket="bounds")
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket="bounds", Key="k", Body=b"x", Metadata={"big": "v" * 2100})
    assert code(e.value) == "MetadataTooLarge"
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket="bounds", Key="k", Body=b"x", Metadata={"note": "v" * 1500},
                     ContentDisposition="attachment; filename=" + "f" * 2000)
    assert code(e.value) == "MetadataTooLarge"
    assert c.list_objects_v2(Bucket="bounds")["KeyCount"] == 0
    c.put_object(Bucket="bounds", Key="k", Body=b"x", Metadata={"note": "v" * 1500})  # within both
    assert c.head_object(Bucket="bounds", Key="k")["Metadata"] == {"note": "v" * 1500}


def _status(error: ClientError) -> tuple[int, str]:
    return error.response["ResponseMetadata"]["HTTPStatusCode"], code(error)


def test_conditional_writes_are_decided_on_the_current_version(s3):
    c = s3.client()
    c.create_bucket(Bucket="cond")
    etag = c.put_object(Bucket="cond", Key="k", Body=b"one", IfNoneMatch="*")["ETag"]
    for refused in ({"IfNoneMatch": "*"}, {"IfNoneMatch": etag}, {"IfMatch": '"0123"'}):
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket="cond", Key="k", Body=b"refused", **refused)
        assert _status(e.value) == (412, "PreconditionFailed"), refused
    assert c.get_object(Bucket="cond", Key="k")["Body"].read() == b"one"
    etag2 = c.put_object(Bucket="cond", Key="k", Body=b"two", IfMatch=etag)["ETag"]
    c.put_object(Bucket="cond", Key="k", Body=b"three", IfNoneMatch=etag)  # not the current ETag: it holds
    assert c.get_object(Bucket="cond", Key="k")["Body"].read() == b"three" and etag2 != etag
    c.delete_object(Bucket="cond", Key="k")
    for needs_one in ({"IfMatch": "*"}, {"IfMatch": etag}):
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket="cond", Key="k", Body=b"refused", **needs_one)
        assert _status(e.value) == (404, "NoSuchKey"), needs_one
    # a file stored through the text protocol has an ETag too, and conditions see it
    with Wire(s3.cluster.port) as w:
        assert w.put("cond/text", b"by text", 2).startswith("OK stored")
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket="cond", Key="text", Body=b"refused over a file", IfNoneMatch="*")
    assert _status(e.value) == (412, "PreconditionFailed")
    assert not s3.cluster.holders(b"refused") and not s3.cluster.holders(b"refused over a file")


def test_a_copy_with_if_match_or_if_none_match_is_decided_on_the_destination(s3):
    c = s3.client()
    c.create_bucket(Bucket="condcopy")
    c.put_object(Bucket="condcopy", Key="src", Body=b"copied bytes")
    kept = c.put_object(Bucket="condcopy", Key="dst", Body=b"kept bytes")["ETag"]
    source = {"Bucket": "condcopy", "Key": "src"}
    for refused in ({"IfNoneMatch": "*"}, {"IfNoneMatch": kept}, {"IfMatch": '"0123"'}):
        with pytest.raises(ClientError) as e:
            c.copy_object(Bucket="condcopy", Key="dst", CopySource=source, **refused)
        assert _status(e.value) == (412, "PreconditionFailed"), refused
    assert c.get_object(Bucket="condcopy", Key="dst")["Body"].read() == b"kept bytes"
    with pytest.raises(ClientError) as e:
        c.copy_object(Bucket="condcopy", Key="new", CopySource=source, IfMatch="*")
    assert _status(e.value) == (404, "NoSuchKey")
    c.copy_object(Bucket="condcopy", Key="new", CopySource=source, IfNoneMatch="*")
    c.copy_object(Bucket="condcopy", Key="dst", CopySource=source, IfMatch=kept)
    for key in ("new", "dst"):
        assert c.get_object(Bucket="condcopy", Key=key)["Body"].read() == b"copied bytes", key


def test_a_big_body_refused_from_its_headers_is_answered_without_being_sent(s3):
    """botocore asks (Expect: 100-continue) before it sends a body over 1 MB:
    a request refused from its headers alone gets its error at once, and
    the body is never sent; one that is not refused is told to go on."""
    c = s3.client()
    c.create_bucket(Bucket="early")
    body = os.urandom(3 * MiB)
    etag = c.put_object(Bucket="early", Key="lock", Body=body, IfNoneMatch="*")["ETag"]  # told to go on
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket="early", Key="lock", Body=body, IfNoneMatch="*")
    assert _status(e.value) == (412, "PreconditionFailed")  # not a connection closed under the client
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket="no-such-bucket", Key="k", Body=body)
    assert code(e.value) == "NoSuchBucket"
    with pytest.raises(ClientError) as e:
        c.upload_part(Bucket="early", Key="k", UploadId="0" * 32, PartNumber=1, Body=body)
    assert code(e.value) == "NoSuchUpload"
    assert c.head_object(Bucket="early", Key="lock")["ETag"] == etag
    # on the wire: no 100 Continue before the refusal, and the connection closed after it
    with socket.create_connection(("127.0.0.1", s3.port), timeout=10) as raw:
        raw.sendall(b"PUT /early/k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3145728\r\n\r\n")
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 403 ") and b"AccessDenied" in reply, reply[:200]


def test_a_refused_request_whose_big_body_comes_anyway_gets_its_error_document(s3):
    """A client that sends its body without asking first (no Expect), as
    curl does: refused, it gets the XML error once a little of the body was
    thrown away, and the connection closes after it; the rest of what it
    sends meanwhile is dropped, not answered with a reset that would lose
    the error. The gateway goes on serving."""
    import threading

    body = os.urandom(8 * MiB)
    unsigned = _signed_put(s3, "/no-such-bucket/k", len(body))
    anonymous = (f"PUT /early2/k HTTP/1.1\r\nHost: 127.0.0.1:{s3.port}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n").encode()
    for head, status, error in ((unsigned, 404, b"NoSuchBucket"), (anonymous, 403, b"AccessDenied")):
        with socket.create_connection(("127.0.0.1", s3.port), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

            def send() -> None:
                try:
                    sock.sendall(head + body)
                except OSError:
                    pass  # the gateway may close before all of it is sent: that is allowed
            sender = threading.Thread(target=send)
            sender.start()
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
            sender.join()
        got, document = _answer(reply)
        assert got == status and b"<Code>" + error + b"</Code>" in document, reply[:300]
        assert b"\r\nConnection: close\r\n" in reply.partition(b"\r\n\r\n")[0] + b"\r\n"
    c = s3.client()
    c.create_bucket(Bucket="after-refusals")
    c.put_object(Bucket="after-refusals", Key="k", Body=b"still serving")
    assert c.get_object(Bucket="after-refusals", Key="k")["Body"].read() == b"still serving"


def test_a_delete_with_if_match_removes_only_the_version_it_names(s3):
    c = s3.client()
    c.create_bucket(Bucket="conddel")
    old = c.put_object(Bucket="conddel", Key="k", Body=b"first")["ETag"]
    new = c.put_object(Bucket="conddel", Key="k", Body=b"second")["ETag"]
    with pytest.raises(ClientError) as e:
        c.delete_object(Bucket="conddel", Key="k", IfMatch=old)  # replaced meanwhile: kept
    assert _status(e.value) == (412, "PreconditionFailed")
    assert c.get_object(Bucket="conddel", Key="k")["Body"].read() == b"second"
    assert c.delete_object(Bucket="conddel", Key="k", IfMatch=new)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as e:
        c.head_object(Bucket="conddel", Key="k")
    assert _status(e.value)[0] == 404
    with pytest.raises(ClientError) as e:  # nothing to match: S3 says so
        c.delete_object(Bucket="conddel", Key="k", IfMatch="*")
    assert _status(e.value) == (404, "NoSuchKey")
    assert c.delete_object(Bucket="conddel", Key="k")["ResponseMetadata"]["HTTPStatusCode"] == 204  # unconditional
    # DeleteObjects: each entry's ETag is its condition
    tags = {key: c.put_object(Bucket="conddel", Key=key, Body=key.encode())["ETag"] for key in ("a", "b", "c")}
    reply = c.delete_objects(Bucket="conddel", Delete={"Objects": [
        {"Key": "a", "ETag": tags["a"]}, {"Key": "b", "ETag": tags["a"]}, {"Key": "c"}, {"Key": "d", "ETag": "*"}]})
    assert sorted(d["Key"] for d in reply["Deleted"]) == ["a", "c"]
    assert sorted((e["Key"], e["Code"]) for e in reply["Errors"]) == [("b", "PreconditionFailed"), ("d", "NoSuchKey")]
    assert [o["Key"] for o in c.list_objects_v2(Bucket="conddel")["Contents"]] == ["b"]
    # conditions on size or time are refused, never ignored: nothing is deleted
    for ask in ({"IfMatchSize": 1}, {"IfMatchLastModifiedTime": datetime.datetime(2020, 1, 1)}):
        with pytest.raises(ClientError) as e:
            c.delete_object(Bucket="conddel", Key="b", **ask)
        assert code(e.value) == "NotImplemented", ask
    for entry in ({"Key": "b", "Size": 1}, {"Key": "b", "LastModifiedTime": datetime.datetime(2020, 1, 1)}):
        with pytest.raises(ClientError) as e:
            c.delete_objects(Bucket="conddel", Delete={"Objects": [entry]})
        assert code(e.value) == "NotImplemented", entry
    assert c.get_object(Bucket="conddel", Key="b")["Body"].read() == b"b"


def test_writers_racing_to_make_one_key_with_if_none_match_have_one_winner(s3):
    """A lock file: every writer asks for no object; the commit decides, so
    exactly one is told yes, its bytes are the object's, and the others'
    copies are deleted. Plain PUTs and GETs going on meanwhile, on the same
    servers' pooled connections, are untouched by the refusals."""
    import threading

    c = s3.client()
    c.create_bucket(Bucket="locks")
    rounds, racers, others = 6, 8, 2
    bodies = {(r, i): f"round {r} holder {i} ".encode() * 10000 for r in range(rounds) for i in range(racers)}
    outcomes: dict = {}
    plain: list = []
    racing = threading.Event()

    def take(r: int, i: int, ready: threading.Barrier) -> None:
        client = s3.client()
        ready.wait()
        try:
            client.put_object(Bucket="locks", Key=f"lock-{r}", Body=bodies[r, i], IfNoneMatch="*")
            outcomes[r, i] = 200
        except ClientError as e:
            outcomes[r, i] = _status(e)

    def meanwhile(key: str) -> None:
        client = s3.client()
        data = os.urandom(1 << 20)
        while racing.is_set():
            try:
                client.put_object(Bucket="locks", Key=key, Body=data)
                plain.append(client.get_object(Bucket="locks", Key=key)["Body"].read() == data)
            except ClientError as e:
                plain.append(_status(e))

    racing.set()
    others = [threading.Thread(target=meanwhile, args=(f"plain-{n}",)) for n in range(others)]
    for other in others:
        other.start()
    try:
        for r in range(rounds):
            ready = threading.Barrier(racers)
            threads = [threading.Thread(target=take, args=(r, i, ready)) for i in range(racers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        racing.clear()
        for other in others:
            other.join()
    assert plain and all(ok is True for ok in plain), plain
    winners = {}
    for r in range(rounds):
        won = [i for i in range(racers) if outcomes[r, i] == 200]
        assert len(won) == 1, outcomes
        # (409: committing while an older racer was still under way, as S3 may answer too)
        assert all(outcomes[r, i] in ((412, "PreconditionFailed"), (409, "ConditionalRequestConflict"))
                   for i in range(racers) if i not in won), outcomes
        assert c.get_object(Bucket="locks", Key=f"lock-{r}")["Body"].read() == bodies[r, won[0]]
        winners[r] = won[0]
    losers = [body for (r, i), body in bodies.items() if winners[r] != i]
    assert poll(lambda: not any(s3.cluster.holders(body) for body in losers), 30)
    assert all(len(s3.cluster.holders(bodies[r, i])) == 2 for r, i in winners.items())


def test_a_complete_refused_by_its_condition_leaves_the_upload_to_finish_or_abort(s3):
    c = s3.client()
    c.create_bucket(Bucket="condparts")
    c.put_object(Bucket="condparts", Key="obj", Body=b"there")
    upload = c.create_multipart_upload(Bucket="condparts", Key="obj")["UploadId"]
    part = c.upload_part(Bucket="condparts", Key="obj", UploadId=upload, PartNumber=1, Body=b"p" * 1000)
    parts = {"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]}
    with pytest.raises(ClientError) as e:
        c.complete_multipart_upload(Bucket="condparts", Key="obj", UploadId=upload, MultipartUpload=parts,
                                    IfNoneMatch="*")
    assert _status(e.value) == (412, "PreconditionFailed")
    assert c.get_object(Bucket="condparts", Key="obj")["Body"].read() == b"there"
    assert [p["PartNumber"] for p in c.list_parts(Bucket="condparts", Key="obj", UploadId=upload)["Parts"]] == [1]
    etag = c.head_object(Bucket="condparts", Key="obj")["ETag"]
    c.complete_multipart_upload(Bucket="condparts", Key="obj", UploadId=upload, MultipartUpload=parts, IfMatch=etag)
    assert c.get_object(Bucket="condparts", Key="obj")["Body"].read() == b"p" * 1000


def test_the_checksums_a_body_came_with_are_kept_and_given_back_for_the_client_to_check(s3):
    """boto3 sends a checksum with each PutObject and asks for it back with
    each GetObject, and then checks the bytes it reads against it."""
    c = s3.client()
    c.create_bucket(Bucket="sums")
    body = os.urandom(100_000)
    crc32 = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    sha256 = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert c.put_object(Bucket="sums", Key="crc", Body=body)["ChecksumCRC32"] == crc32  # boto3's default
    assert c.put_object(Bucket="sums", Key="sha", Body=body, ChecksumAlgorithm="SHA256")["ChecksumSHA256"] == sha256
    got = c.get_object(Bucket="sums", Key="crc")  # boto3 asks (x-amz-checksum-mode) and checks as it reads
    assert (got["ChecksumCRC32"], got["ChecksumType"], got["Body"].read()) == (crc32, "FULL_OBJECT", body)
    assert c.head_object(Bucket="sums", Key="sha", ChecksumMode="ENABLED")["ChecksumSHA256"] == sha256
    assert "ChecksumSHA256" not in c.head_object(Bucket="sums", Key="sha")  # not asked for
    part = c.get_object(Bucket="sums", Key="sha", Range="bytes=10-19")  # a range has no checksum of its own
    assert part["Body"].read() == body[10:20] and "ChecksumSHA256" not in part
    attributes = c.get_object_attributes(Bucket="sums", Key="sha", ObjectAttributes=["Checksum"])
    assert attributes["Checksum"] == {"ChecksumSHA256": sha256, "ChecksumType": "FULL_OBJECT"}
    # a copy is the same bytes: its checksums stand, whether or not its metadata is replaced
    c.copy_object(Bucket="sums", Key="copy", CopySource={"Bucket": "sums", "Key": "crc"})
    c.copy_object(Bucket="sums", Key="copy2", CopySource={"Bucket": "sums", "Key": "sha"},
                  MetadataDirective="REPLACE", Metadata={"note": "replaced"})
    assert c.head_object(Bucket="sums", Key="copy", ChecksumMode="ENABLED")["ChecksumCRC32"] == crc32
    assert c.head_object(Bucket="sums", Key="copy2", ChecksumMode="ENABLED")["ChecksumSHA256"] == sha256
    # one stored through the text protocol came with none
    with Wire(s3.cluster.port) as w:
        assert w.put("sums/text", body, 2).startswith("OK stored")
    got = c.get_object(Bucket="sums", Key="text")
    assert got["Body"].read() == body and not any(key.startswith("Checksum") for key in got)


def test_server_side_encryption_is_refused_and_stores_nothing(s3):
    """Objects are stored as sent: a request asking for encryption (SSE-S3,
    SSE-KMS, or a customer's key) is refused rather than served in the clear."""
    c = s3.client()
    c.create_bucket(Bucket="sealed")
    asks = [{"ServerSideEncryption": "AES256"}, {"ServerSideEncryption": "aws:kms"},
            {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32}]
    _refused_and_nothing_stored(c, "sealed", asks)


def _refused_and_nothing_stored(c, bucket: str, asks: list[dict]) -> None:
    """Each ask, given to PutObject and to CreateMultipartUpload, is NotImplemented and leaves nothing."""
    for ask in asks:
        with pytest.raises(ClientError) as e:
            c.put_object(Bucket=bucket, Key="k", Body=b"not stored", **ask)
        assert code(e.value) == "NotImplemented", ask
        with pytest.raises(ClientError) as e:
            c.create_multipart_upload(Bucket=bucket, Key="k", **ask)
        assert code(e.value) == "NotImplemented", ask
    assert c.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_object_lock_is_refused_and_stores_nothing(s3):
    """Nothing here keeps an object from being deleted or replaced: a
    request asking for a retention or a legal hold, or for a bucket with
    object lock, is refused rather than stored unprotected."""
    c = s3.client()
    c.create_bucket(Bucket="unlocked")
    until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    asks = [{"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until},
            {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": until}, {"ObjectLockLegalHoldStatus": "ON"}]
    _refused_and_nothing_stored(c, "unlocked", asks)
    with pytest.raises(ClientError) as e:
        c.create_bucket(Bucket="worm", ObjectLockEnabledForBucket=True)
    assert code(e.value) == "NotImplemented"
    assert "worm" not in [b["Name"] for b in c.list_buckets()["Buckets"]]
    c.create_bucket(Bucket="worm", ObjectLockEnabledForBucket=False)  # asking for none is fine


def test_delete_objects_and_copies(s3):
    c = s3.client()
    c.create_bucket(Bucket="copies")
    for key in ("one", "two", "three"):
        c.put_object(Bucket="copies", Key=key, Body=key.encode(), ContentType="text/plain", Metadata={"k": key})
    out = c.delete_objects(Bucket="copies", Delete={"Objects": [{"Key": "one"}, {"Key": "two"}, {"Key": "none"}]})
    assert sorted(d["Key"] for d in out["Deleted"]) == ["none", "one", "two"]
    assert [o["Key"] for o in c.list_objects_v2(Bucket="copies")["Contents"]] == ["three"]
    c.copy_object(Bucket="copies", Key="three-copy", CopySource={"Bucket": "copies", "Key": "three"})
    copy = c.get_object(Bucket="copies", Key="three-copy")
    assert copy["Body"].read() == b"three" and copy["Metadata"] == {"k": "three"}
    assert copy["ContentType"] == "text/plain" and copy["ETag"] == '"%s"' % hashlib.md5(b"three").hexdigest()
    c.copy_object(Bucket="copies", Key="three", CopySource="copies/three", MetadataDirective="REPLACE",
                  Metadata={"k": "new"}, ContentType="text/x-new")
    again = c.head_object(Bucket="copies", Key="three")
    assert again["Metadata"] == {"k": "new"} and again["ContentType"] == "text/x-new"
    with pytest.raises(ClientError) as e:
        c.copy_object(Bucket="copies", Key="x", CopySource="copies/absent")
    assert code(e.value) == "NoSuchKey"


def test_versions_are_listed_as_the_one_null_version_of_each_object_and_no_other_is_touched(s3):
    """Only the current version is kept: ListObjectVersions lists each object
    once (VersionId null, as S3 lists a bucket never versioned), a page at a
    time; a request naming any other version changes nothing."""
    c = s3.client()
    c.create_bucket(Bucket="versions")
    keys = ["a/1", "a/2", "b", "c"]
    for key in keys:
        c.put_object(Bucket="versions", Key=key, Body=key.encode())
    assert c.get_bucket_versioning(Bucket="versions").get("Status") is None  # never turned on
    listed, marker = [], ""
    while True:
        page = c.list_object_versions(Bucket="versions", MaxKeys=2, KeyMarker=marker)
        listed += [(v["Key"], v["VersionId"], v["IsLatest"], v["Size"]) for v in page.get("Versions", [])]
        if not page["IsTruncated"]:
            break
        marker = page["NextKeyMarker"]
    assert listed == [(key, "null", True, len(key)) for key in keys]
    rolled = c.list_object_versions(Bucket="versions", Delimiter="/")
    assert [p["Prefix"] for p in rolled["CommonPrefixes"]] == ["a/"]
    assert [v["Key"] for v in rolled["Versions"]] == ["b", "c"]
    for call in (lambda: c.get_object(Bucket="versions", Key="b", VersionId="3HL4kqtJlcpXroDTDmJ"),
                 lambda: c.delete_object(Bucket="versions", Key="b", VersionId="3HL4kqtJlcpXroDTDmJ")):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e.value) == "NoSuchVersion"
    out = c.delete_objects(Bucket="versions", Delete={"Objects": [
        {"Key": "b", "VersionId": "3HL4kqtJlcpXroDTDmJ"}, {"Key": "c", "VersionId": "null"}]})
    assert [(e["Key"], e["Code"]) for e in out["Errors"]] == [("b", "NoSuchVersion")]
    assert [(d["Key"], d["VersionId"]) for d in out["Deleted"]] == [("c", "null")]
    assert c.get_object(Bucket="versions", Key="b", VersionId="null")["Body"].read() == b"b"
    assert [o["Key"] for o in c.list_objects_v2(Bucket="versions")["Contents"]] == ["a/1", "a/2", "b"]
    with pytest.raises(ClientError) as e:
        c.put_bucket_versioning(Bucket="versions", VersioningConfiguration={"Status": "Enabled"})
    assert code(e.value) == "NotImplemented"
    with pytest.raises(ClientError) as e:
        c.list_object_versions(Bucket="nobucket")
    assert code(e.value) == "NoSuchBucket"


def test_replicas_metadata_sets_the_copies_counted_on_disk(s3):
    c = s3.client()
    c.create_bucket(Bucket="safe")
    data = os.urandom(50_000)
    c.put_object(Bucket="safe", Key="three", Body=data, Metadata={"replicas": "3"})
    assert len(s3.cluster.holders(data)) == 3
    data1 = os.urandom(50_000)
    c.put_object(Bucket="safe", Key="one", Body=data1, Metadata={"replicas": "1"})
    assert len(s3.cluster.holders(data1)) == 1
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket="safe", Key="bad", Body=b"x", Metadata={"replicas": "99"})
    assert code(e.value) == "InvalidArgument"


def test_a_file_stored_through_the_text_protocol_is_an_object(s3):
    c = s3.client()
    c.create_bucket(Bucket="shared")
    data = os.urandom(10_000)
    with Wire(s3.cluster.port) as w:
        assert w.put("shared/from-text.bin", data).startswith("OK stored")
    got = c.get_object(Bucket="shared", Key="from-text.bin")
    assert got["Body"].read() == data and got["ETag"].endswith('-1"')  # not an MD5: tools do not compare it
    # a text file "<bucket>/" would be an empty key: S3 cannot list it, and deleting the bucket says why it stays
    c.create_bucket(Bucket="unnamed")
    with Wire(s3.cluster.port) as w:
        assert w.put("unnamed/", b"x").startswith("OK stored")
    assert c.list_objects_v2(Bucket="unnamed")["KeyCount"] == 0
    with pytest.raises(ClientError) as e:
        c.delete_bucket(Bucket="unnamed")
    assert code(e.value) == "BucketNotEmpty" and "'unnamed/'" in e.value.response["Error"]["Message"]
    with Wire(s3.cluster.port) as w:
        assert w.cmd("DELETE unnamed/").startswith("OK")
    c.delete_bucket(Bucket="unnamed")


def test_signatures_are_checked_and_presigned_urls_work(s3):
    c = s3.client()
    c.create_bucket(Bucket="signed")
    c.put_object(Bucket="signed", Key="doc", Body=b"secret words")
    for client, expected in ((s3.client(secret="wrong" + SECRET[5:]), "SignatureDoesNotMatch"),
                             (s3.client(access="AKIAUNKNOWN000000000"), "InvalidAccessKeyId")):
        with pytest.raises(ClientError) as e:
            client.get_object(Bucket="signed", Key="doc")
        assert code(e.value) == expected
        with pytest.raises(ClientError) as e:
            client.put_object(Bucket="signed", Key="doc", Body=b"overwritten")
        assert code(e.value) == expected
    assert c.get_object(Bucket="signed", Key="doc")["Body"].read() == b"secret words"
    url = c.generate_presigned_url("get_object", Params={"Bucket": "signed", "Key": "doc"}, ExpiresIn=60)
    assert urllib.request.urlopen(url, timeout=10).read() == b"secret words"
    tampered = url.replace("Signature=", "Signature=0")[:len(url)]
    expired = c.generate_presigned_url("get_object", Params={"Bucket": "signed", "Key": "doc"}, ExpiresIn=1)
    time.sleep(2)
    version2 = s3.client(signature_version="s3").generate_presigned_url(
        "get_object", Params={"Bucket": "signed", "Key": "doc"}, ExpiresIn=60)
    for bad in (tampered, expired, f"{s3.url}/signed/doc", version2):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=10)
        assert e.value.code == 403 and b"<Error>" in e.value.read()
    signed = _signed(s3, "GET", "/signed/doc", {"Connection": "close", "x-amz-content-sha256": EMPTY})
    at = signed.index(b"Signature=") + len(b"Signature=")
    flipped = signed[:at] + (b"1" if signed[at:at + 1] == b"0" else b"0") + signed[at + 1:]
    for bad in (flipped, signed.replace(b"GET /signed/doc ", b"GET /signed/other ")):
        status, answer = _answer(_raw(s3.port, bad))
        assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer
    assert _answer(_raw(s3.port, signed)) == (200, b"secret words")
    # a browser's preflight (OPTIONS, never signed) is answered as S3 answers where no bucket allows CORS
    for extra, (status, error) in ((b"", (400, b"BadRequest")),
                                   (b"Origin: http://example.com\r\n", (403, b"AccessForbidden"))):
        status_got, answer = _answer(_raw(s3.port, b"OPTIONS /signed/doc HTTP/1.1\r\nHost: x\r\n" + extra
                                          + b"Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n"))
        assert status_got == status and b"<Code>" + error + b"</Code>" in answer
    assert urllib.request.urlopen(url, timeout=10).read() == b"secret words"


def test_a_body_that_fails_its_digest_stores_nothing(s3):
    c = s3.client()
    c.create_bucket(Bucket="digest")
    c.put_object(Bucket="digest", Key="k", Body=b"first")
    import base64
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket="digest", Key="k", Body=b"second", ContentMD5=wrong)
    assert code(e.value) == "BadDigest"
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket="digest", Key="k", Body=b"second", ChecksumCRC32="AAAAAA==")
    assert code(e.value) in ("BadDigest", "InvalidRequest")
    not_signed = _signed(s3, "PUT", "/digest/k", {"Content-Length": "6", "Connection": "close",
                                                  "x-amz-content-sha256": hashlib.sha256(b"second").hexdigest()})
    status, answer = _answer(_raw(s3.port, not_signed + b"SECOND"))
    assert status == 400 and b"<Code>XAmzContentSHA256Mismatch</Code>" in answer
    huge = _signed(s3, "PUT", "/digest/k", {"Content-Length": "9" * 23, "Expect": "100-continue",
                                            "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    status, answer = _answer(_raw(s3.port, huge))  # refused before the body is asked for
    assert status == 400 and b"<Code>InvalidArgument</Code>" in answer  # not a length it could take
    assert c.get_object(Bucket="digest", Key="k")["Body"].read() == b"first"
    with Wire(s3.cluster.port) as w:
        assert w.stat("digest/k")["version"] == "1"


def _raw(port: int, request: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        if not read:
            return b""
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_hostile_requests_get_errors_and_the_gateway_keeps_serving(s3):
    c = s3.client()
    c.create_bucket(Bucket="hostile")
    # unsigned, malformed, oversized: errors, never a crash
    head = b"GET /hostile HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    assert _raw(s3.port, head + b"\r\n")[9:12] == b"403"
    assert _raw(s3.port, head + b"Authorization: AWS4-HMAC-SHA256 nonsense\r\n\r\n")[9:12] in (b"400", b"403")
    huge = _raw(s3.port, b"GET /hostile HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert huge == b"" or b" 4" in huge[:20]
    _raw(s3.port, b"PUT /hostile/torn HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100000\r\n\r\nonly a few bytes", read=False)
    _raw(s3.port, os.urandom(5000), read=False)
    # a signed upload cut short stores nothing
    sock = socket.create_connection(("127.0.0.1", s3.port), timeout=10)
    request = _signed_put(s3, "/hostile/cut", 1 << 20)
    sock.sendall(request + os.urandom(300_000))
    sock.close()
    with pytest.raises(ClientError) as e:
        c.delete_objects(Bucket="hostile", Delete={"Objects": []})
    assert code(e.value) in ("MalformedXML", "InvalidRequest")
    c.put_object(Bucket="hostile", Key="after", Body=b"still serving")
    assert c.get_object(Bucket="hostile", Key="after")["Body"].read() == b"still serving"
    assert poll(lambda: [o["Key"] for o in c.list_objects_v2(Bucket="hostile")["Contents"]] == ["after"], 5)
    assert s3.cluster.proxy.poll() is None


def _signed_put(s3, path: str, size: int) -> bytes:
    """The head of a PUT of ``size`` unsigned-payload bytes, signed with botocore's signer."""
    return _signed(s3, "PUT", path, {"Content-Length": str(size), "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})


def _signed(s3, method: str, path: str, headers: dict[str, str]) -> bytes:
    """The head of a request signed with botocore's signer, with ``headers``
    (and Host) as given, its body stated by their x-amz-content-sha256."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    class AsStated(S3SigV4Auth):
        """Over plain HTTP botocore would state the SHA-256 of the body it holds (none here)."""

        def payload(self, request):
            return headers["x-amz-content-sha256"]

    request = AWSRequest(method, s3.url + path, headers=headers)
    AsStated(Credentials(ACCESS, SECRET), "s3", "us-east-1").add_auth(request)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{s3.port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
    return (head + "\r\n").encode()


def _virtual_host(s3, method: str, host: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """A request signed by botocore for ``http://<host>:<port><path>`` (virtual-host
    style), sent to the S3 port: its status and body."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method, f"http://{host}:{s3.port}{path}", data=body,
                         headers={"Content-Length": str(len(body)), "Connection": "close"})
    S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", "us-east-1").add_auth(request)
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{s3.port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
    return _answer(_raw(s3.port, (head + "\r\n").encode() + body))


def test_virtual_host_style_names_the_bucket_in_the_host(s3):
    """With --s3-domain s3.test, a request to host B.s3.test is to bucket B,
    the path being the key; path style goes on working beside it."""
    c = s3.client()
    c.create_bucket(Bucket="vhost")
    status, _ = _virtual_host(s3, "PUT", "vhost.s3.test", "/dir/a%20b.txt", b"by host")
    assert status == 200
    assert c.get_object(Bucket="vhost", Key="dir/a b.txt")["Body"].read() == b"by host"
    assert _virtual_host(s3, "GET", "vhost.s3.test", "/dir/a%20b.txt") == (200, b"by host")
    status, listing = _virtual_host(s3, "GET", "vhost.s3.test", "/?list-type=2&prefix=dir%2F")
    assert status == 200 and b"<Key>dir/a b.txt</Key>" in listing
    status, error = _virtual_host(s3, "GET", "nosuch.s3.test", "/x")
    assert status == 404 and b"<Code>NoSuchBucket</Code>" in error
    status, error = _virtual_host(s3, "GET", "bad_name.s3.test", "/x")
    assert status == 400 and b"<Code>InvalidBucketName</Code>" in error
    status, buckets = _virtual_host(s3, "GET", "s3.test", "/")  # the domain itself: path style
    assert status == 200 and b"<Name>vhost</Name>" in buckets


def _signed_body(s3, method: str, path: str, body: bytes) -> bytes:
    """A whole request with a signed body (its SHA-256 in x-amz-content-sha256), answered then closed."""
    return _signed(s3, method, path, {"Content-Length": str(len(body)), "Connection": "close",
                                      "x-amz-content-sha256": hashlib.sha256(body).hexdigest()}) + body


def _answer(reply: bytes) -> tuple[int, bytes]:
    """The status and body of a raw HTTP answer."""
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), reply[:80]
    return int(head[9:12]), body


def test_names_and_parameters_that_are_not_utf8_or_hold_control_characters_are_refused(s3):
    """A listing's prefix, marker or token, or a copy's source, percent-encoding
    bytes that are not UTF-8, or a control character no name holds, gets 400
    InvalidArgument (never a lookup of a name with U+FFFD in it), and the
    gateway keeps serving."""
    c = s3.client()
    c.create_bucket(Bucket="utf")
    c.put_object(Bucket="utf", Key="\ufffd", Body=b"a name with U+FFFD")
    empty = hashlib.sha256(b"").hexdigest()
    nul_token = base64.urlsafe_b64encode(b"\x00\x00\x00").decode()
    for path, headers in [("/utf?list-type=2&prefix=%FF", {}), ("/utf?prefix=%C3", {}),
                          ("/utf/copy", {"x-amz-copy-source": "/utf/%FF"}),
                          ("/utf?list-type=2&prefix=%00", {}), ("/utf?list-type=2&start-after=%00", {}),
                          (f"/utf?list-type=2&continuation-token={nul_token}", {}), ("/utf?marker=%01", {}),
                          ("/utf?uploads&prefix=%00", {}), ("/utf?uploads&key-marker=%00", {}),
                          ("/utf?versions&key-marker=%00", {}), ("/?prefix=%00", {})]:
        head = _signed(s3, "PUT" if headers else "GET", path,
                       {**headers, "Content-Length": "0", "Connection": "close", "x-amz-content-sha256": empty})
        status, error = _answer(_raw(s3.port, head))
        assert status == 400 and b"<Code>InvalidArgument</Code>" in error, (path, error)
    assert [o["Key"] for o in c.list_objects_v2(Bucket="utf")["Contents"]] == ["\ufffd"]


def test_bad_xml_is_malformed_and_changes_nothing(s3):
    c = s3.client()
    c.create_bucket(Bucket="xml")
    c.put_object(Bucket="xml", Key="kept", Body=b"kept")
    bodies = [b"<Delete><Object><Key>kept</Key></Object>",  # never closed
              b"not XML at all \x00\xff",
              b'<!DOCTYPE d [<!ENTITY e "kept">]><Delete><Object><Key>&e;</Key></Object></Delete>',
              b"<Other><Object><Key>kept</Key></Object></Other>"]
    for body in bodies:
        status, answer = _answer(_raw(s3.port, _signed_body(s3, "POST", "/xml?delete", body)))
        assert status == 400 and b"<Code>MalformedXML</Code>" in answer, answer
    status, answer = _answer(_raw(s3.port, _signed_body(
        s3, "PUT", "/xml-new", b"<CreateBucketConfiguration><LocationConstraint>")))
    assert status == 400 and b"<Code>MalformedXML</Code>" in answer
    too_many = b"<Delete>" + b"<Object><Key>kept</Key></Object>" * 40_000 + b"</Delete>"  # 1.3 MB
    status, answer = _answer(_raw(s3.port, _signed_body(s3, "POST", "/xml?delete", too_many)))
    assert status == 400 and b"<Code>MalformedXML</Code>" in answer  # refused before it is parsed
    too_big = b"<Delete><Object><Key>kept</Key></Object>" + b" " * (8 << 20) + b"</Delete>"
    status, answer = _answer(_raw(s3.port, _signed_body(s3, "POST", "/xml?delete", too_big)))
    assert status == 400 and b"<Code>EntityTooLarge</Code>" in answer
    assert c.get_object(Bucket="xml", Key="kept")["Body"].read() == b"kept"
    assert "xml-new" not in [b["Name"] for b in c.list_buckets()["Buckets"]]


def test_numbers_longer_than_any_size_are_answered(s3):
    """A position or a count of thousands of digits gets an answer at once
    (Python's int() refuses them: a request must not be left unanswered)."""
    c = s3.client(read_timeout=10)
    c.create_bucket(Bucket="numbers")
    c.put_object(Bucket="numbers", Key="k", Body=b"0123456789")
    huge = "9" * 5000
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="numbers", Key="k", Range=f"bytes={huge}-")
    assert code(e.value) == "InvalidRange"
    assert c.get_object(Bucket="numbers", Key="k", Range=f"bytes=2-{huge}")["Body"].read() == b"23456789"
    status, answer = _answer(_raw(s3.port, _signed(s3, "GET", f"/numbers?list-type=2&max-keys={huge}",
                                                   {"Connection": "close", "x-amz-content-sha256": EMPTY})))
    assert status == 200 and b"<Key>k</Key>" in answer and b"<MaxKeys>1000</MaxKeys>" in answer


def test_keys_holding_the_highest_character_list_once_and_promptly(s3):
    """After a common prefix P a listing goes on past every name under P,
    even P followed by U+10FFFF (the highest character a name may hold) up
    to the longest name there is room for."""
    c = s3.client(read_timeout=10)
    c.create_bucket(Bucket="edges")
    top = "\U0010ffff"
    longest = "edge/" + top * 253  # "edges/edge/" and 1012 bytes: a name of 1023 bytes
    keys = ["edge/" + top, "edge/" + top + "x", longest, "edge/a", "edgy", "f"]
    for key in keys:
        c.put_object(Bucket="edges", Key=key, Body=b"e")
    listed = c.list_objects_v2(Bucket="edges", Delimiter="/")
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["edge/"]
    assert [o["Key"] for o in listed["Contents"]] == ["edgy", "f"]
    for operation in ("list_objects_v2", "list_objects"):
        pages = c.get_paginator(operation).paginate(Bucket="edges", Delimiter="/", PaginationConfig={"PageSize": 1})
        seen = [name for page in pages for name in [p["Prefix"] for p in page.get("CommonPrefixes", [])]
                + [o["Key"] for o in page.get("Contents", [])]]
        assert seen == ["edge/", "edgy", "f"], operation
    under = c.list_objects_v2(Bucket="edges", Prefix="edge/")
    assert [o["Key"] for o in under["Contents"]] == sorted(keys[:4])


def _aws_chunked(data: bytes) -> bytes:
    """``data`` framed by botocore as boto3 sends it over HTTPS: aws-chunked, a CRC32 trailer."""
    import io

    from botocore.httpchecksum import AwsChunkedWrapper, CrtCrc32Checksum

    return AwsChunkedWrapper(io.BytesIO(data), checksum_cls=CrtCrc32Checksum,
                             checksum_name="x-amz-checksum-crc32", chunk_size=64 << 10).read()


def _chunked_put(s3, path: str, framed: bytes, size: int) -> bytes:
    return _signed(s3, "PUT", path, {
        "Content-Length": str(len(framed)), "Content-Encoding": "aws-chunked", "Connection": "close",
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "x-amz-trailer": "x-amz-checksum-crc32",
        "x-amz-decoded-content-length": str(size)}) + framed


def test_an_aws_chunked_body_is_stored_decoded_and_a_corrupt_one_not_at_all(s3):
    c = s3.client()
    c.create_bucket(Bucket="chunked")
    data = os.urandom(300_000)
    framed = _aws_chunked(data)
    status, answer = _answer(_raw(s3.port, _chunked_put(s3, "/chunked/k", framed, len(data))))
    assert status == 200, answer
    got = c.get_object(Bucket="chunked", Key="k")
    assert got["Body"].read() == data and got["ETag"] == '"%s"' % hashlib.md5(data).hexdigest()
    with Wire(s3.cluster.port) as w:  # the bytes stored are the object's, not its framing
        reply, body = w.get("chunked/k")
        assert body == data and f"sha256={hashlib.sha256(data).hexdigest()}" in reply
    middle = len(framed) // 2
    corrupt = framed[:middle] + bytes([framed[middle] ^ 1]) + framed[middle + 1:]  # a data byte: the CRC32 tells
    status, answer = _answer(_raw(s3.port, _chunked_put(s3, "/chunked/k", corrupt, len(data))))
    assert status == 400 and b"<Code>BadDigest</Code>" in answer, answer
    assert c.get_object(Bucket="chunked", Key="k")["Body"].read() == data
    with Wire(s3.cluster.port) as w:
        assert w.stat("chunked/k")["version"] == "1"


@pytest.mark.slow
def test_boto3_over_https_sends_aws_chunked_bodies_with_trailers_and_they_are_stored(tmp_path):
    """Over HTTPS, current boto3 sends a PutObject's body aws-chunked with a
    CRC32 trailer and no body signature (over plain HTTP it signs the body
    instead, as every other test here sees): the object is its bytes, not
    their framing."""
    pytest.importorskip("OpenSSL")
    pytest.importorskip("service_identity")
    from tests.test_tls import PKI

    pki = PKI(tmp_path / "pki")
    keys = tmp_path / "s3-keys"
    keys.write_text(f"{ACCESS} {SECRET}\n")
    port = free_port()
    tls = f"ssl:{port}:interface=127.0.0.1:privateKey={pki.key}:certKey={pki.cert}"
    cluster = Cluster(tmp_path, proxy_args=("--replicas", "1", "--s3", tls, "--s3-keys", str(keys)))
    cluster.start(1)
    try:
        assert poll(lambda: _open(port), 10)
        c = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{port}", verify=str(pki.ca),
                         aws_access_key_id=ACCESS, aws_secret_access_key=SECRET, region_name="us-east-1",
                         config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
        sent: list[dict[str, str]] = []
        c.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(
            {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}))
        c.create_bucket(Bucket="tls")
        data = os.urandom(600_000)
        etag = c.put_object(Bucket="tls", Key="k", Body=data)["ETag"]
        assert sent[-1]["content-encoding"] == "aws-chunked"
        assert sent[-1]["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        assert sent[-1]["x-amz-trailer"].startswith("x-amz-checksum-")
        assert etag == '"%s"' % hashlib.md5(data).hexdigest()
        assert c.get_object(Bucket="tls", Key="k")["Body"].read() == data
        with Wire(cluster.port) as w:
            reply, body = w.get("tls/k")
            assert body == data and reply.startswith(f"OK {len(data)} ")
    finally:
        cluster.stop()


@pytest.mark.slow
def test_a_big_object_streams_through_in_bounded_memory(s3, tmp_path):
    c = s3.client()
    c.create_bucket(Bucket="big")
    size = 64 << 20
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    before = _rss(s3.cluster.proxy.pid)
    with open(source, "rb") as f:
        c.put_object(Bucket="big", Key="b", Body=f)
    got = c.get_object(Bucket="big", Key="b")["Body"]
    digest = hashlib.sha256()
    while chunk := got.read(1 << 20):
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()
    grown = _rss(s3.cluster.proxy.pid) - before
    assert grown < size // 2, f"the proxy grew by {grown} bytes for a {size}-byte object"
    # boto3's download_file reads an object this big as ranged GETs side by side
    copy = tmp_path / "copy.bin"
    c.download_file("big", "b", str(copy))
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest.hexdigest()


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_get_goes_on_from_another_copy_when_its_server_is_killed_mid_stream(s3):
    """Every promise of the text protocol holds through S3: a copy that dies
    while its bytes flow, the next continues at the same offset."""
    from tests.cluster import sha

    c = s3.client()
    c.create_bucket(Bucket="failover")
    data = os.urandom(48 << 20)
    c.put_object(Bucket="failover", Key="big", Body=data, Metadata={"replicas": "3"})
    url = c.generate_presigned_url("get_object", Params={"Bucket": "failover", "Key": "big"}, ExpiresIn=60)
    head, body, serving = get_killing_the_senders(s3, url, "", 1 << 20)
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(data)}".encode() in head
    assert len(body) == len(data) and sha(body) == sha(data)
    assert any(f"from {sid} failed at" in s3.cluster.log("proxy") for sid in serving)


def get_killing_the_senders(s3, url: str, headers: str, first: int) -> tuple[bytes, bytes, list[str]]:
    """GET a presigned ``url`` on a socket with a small receive buffer; once
    ``first`` bytes of the body are in, kill the servers sending it (and any
    other busy at that moment: one copy left is enough), read the rest, and
    start them again. (head, body, the servers killed)."""
    from tests.cluster import serving_servers

    host, _, path = url.partition("//")[2].partition("/")
    sock = socket.create_connection(("127.0.0.1", s3.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        got += sock.recv(65536)
    head, _, body = got.partition(b"\r\n\r\n")
    while len(body) < first:
        body += sock.recv(65536)

    def senders() -> list[str] | None:
        found = serving_servers(s3.cluster, [s3.port])
        # a server that has sent its part may hold the reader's socket a moment longer (a hand-off's end)
        return found if 0 < len(found) < 3 else None

    serving = poll(senders, 5)
    assert serving
    for sid in serving:
        s3.cluster.kill(sid)
    try:
        while chunk := sock.recv(1 << 20):
            body += chunk
        sock.close()
    finally:
        for sid in serving:
            s3.cluster.start_server(sid)
        s3.cluster.wait_up(3)
    return head, body, serving


@pytest.mark.slow
def test_a_proxy_killed_mid_put_object_leaves_nothing_visible_or_on_disk(s3):
    """kill -9 of the proxy while a PutObject's body streams: after a
    restart the object is not there, and no partial file is left on any
    server's disk."""
    from tests.cluster import incoming, incoming_bytes

    c = s3.client()
    c.create_bucket(Bucket="torn")
    size = 32 << 20
    sock = socket.create_connection(("127.0.0.1", s3.port), timeout=10)
    sock.sendall(_signed_put(s3, "/torn/object", size) + os.urandom(8 << 20))
    assert poll(lambda: any(incoming_bytes(s3.cluster, sid) > 0 for sid in s3.cluster.servers), 10)
    s3.cluster.kill_proxy()
    sock.close()
    s3.cluster.start_proxy()
    s3.cluster.wait_up(3)
    assert poll(lambda: _open(s3.port), 10)
    with pytest.raises(ClientError) as e:
        s3.client().head_object(Bucket="torn", Key="object")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert poll(lambda: not any(incoming(s3.cluster, sid) for sid in s3.cluster.servers), 20)


@pytest.mark.slow
def test_two_proxies_on_one_postgresql_catalog_serve_one_s3_namespace(tmp_path, postgres):
    """Several proxies, each with its S3 port, on one PostgreSQL catalog: a
    bucket made through one is there through the other, an object put
    through one reads back through the other, and a multipart upload may
    go through both."""
    from tests.test_two_proxies import stop_two

    url = postgres.database()
    keys = tmp_path / "s3-keys"
    keys.write_text(f"{ACCESS} {SECRET}\n")
    a = Cluster(tmp_path, proxy_args=("--catalog", url, "--s3-keys", str(keys)))
    b = a.add_proxy("proxy-b")
    ports = free_port(), free_port()
    try:
        a.start_proxy("--s3", f"tcp:{ports[0]}:interface=127.0.0.1")
        b.start_proxy("--s3", f"tcp:{ports[1]}:interface=127.0.0.1")
        for i in range(3):
            a.start_server(f"s{i}")
        a.wait_up(3)
        b.wait_up(3)
        one, two = S3(a, ports[0]).client(), S3(b, ports[1]).client()
        assert poll(lambda: _open(ports[0]) and _open(ports[1]), 10)
        one.create_bucket(Bucket="shared")
        assert [x["Name"] for x in two.list_buckets()["Buckets"]] == ["shared"]
        data = os.urandom(200_000)
        etag = one.put_object(Bucket="shared", Key="k", Body=data, Metadata={"replicas": "3"})["ETag"]
        got = two.get_object(Bucket="shared", Key="k")
        assert got["Body"].read() == data and got["ETag"] == etag
        two.put_object(Bucket="shared", Key="k", Body=b"newer")
        assert one.get_object(Bucket="shared", Key="k")["Body"].read() == b"newer"
        # a multipart upload begun through one proxy, its parts sent through both, completed through the other
        first, last = os.urandom(5 << 20), os.urandom(1000)
        upload = one.create_multipart_upload(Bucket="shared", Key="parts")["UploadId"]
        e1 = one.upload_part(Bucket="shared", Key="parts", UploadId=upload, PartNumber=1, Body=first)["ETag"]
        e2 = two.upload_part(Bucket="shared", Key="parts", UploadId=upload, PartNumber=2, Body=last)["ETag"]
        assert [p["PartNumber"] for p in one.list_parts(Bucket="shared", Key="parts", UploadId=upload)["Parts"]] == [1, 2]
        two.complete_multipart_upload(Bucket="shared", Key="parts", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
        assert one.get_object(Bucket="shared", Key="parts")["Body"].read() == first + last
        with pytest.raises(ClientError) as e:
            two.delete_bucket(Bucket="shared")
        assert code(e.value) == "BucketNotEmpty"
        # writers racing through both proxies for one lock file: the database decides, one winner
        import threading

        bodies = [f"holder {i} ".encode() * 20000 for i in range(8)]
        ready, outcomes = threading.Barrier(len(bodies)), [None] * len(bodies)

        def take(i: int) -> None:
            client = S3(a, ports[0]).client() if i % 2 else S3(b, ports[1]).client()
            ready.wait()
            try:
                client.put_object(Bucket="shared", Key="lock", Body=bodies[i], IfNoneMatch="*")
                outcomes[i] = 200
            except ClientError as error:
                outcomes[i] = _status(error)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [i for i, outcome in enumerate(outcomes) if outcome == 200]
        refused = outcomes.count((412, "PreconditionFailed")) + outcomes.count((409, "ConditionalRequestConflict"))
        assert len(won) == 1 and refused == len(bodies) - 1, outcomes  # (409: an older racer still under way)
        assert two.get_object(Bucket="shared", Key="lock")["Body"].read() == bodies[won[0]]
    finally:
        stop_two(a, b)
        postgres.drop(url)


METHODS = ["GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "G\x00T", ""]
PATHS = ["/", "/fuzz", "/fuzz/k", "/fuzz/%ff%fe", "/fuzz/%00", "/fuzz/" + "k" * 2000, "/Fuzz/k", "//", "/fuzz?uploads",
         "/fuzz/k?uploadId=1&partNumber=1", "/fuzz?delete", "/fuzz?list-type=2&max-keys=-1", "/fuzz?acl",
         "/fuzz/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=x", "/%", "*", "/fuzz/../../etc/passwd"]
HEADERS = [b"Authorization: AWS4-HMAC-SHA256 Credential=AKIADEPOSITOTEST0001/20260101/us-east-1/s3/aws4_request,"
           b" SignedHeaders=host, Signature=" + b"0" * 64,
           b"Authorization: AWS AKIADEPOSITOTEST0001:abc", b"Authorization: \xff\xfe",
           b"x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD", b"x-amz-content-sha256: nonsense",
           b"x-amz-decoded-content-length: 99999999999999999999", b"x-amz-date: yesterday",
           b"Content-MD5: !!!", b"x-amz-checksum-crc32: zz", b"Range: bytes=9-1",
           b"Expect: 100-continue", b"x-amz-meta-replicas: 1000", b"x-amz-copy-source: /nowhere"]


def hostile_request(rng) -> bytes:
    """A request, wrong in some way, whose body is all sent (one that promises
    more bytes than it sends waits for them, up to the gateway's idle timeout)."""
    head = f"{rng.choice(METHODS)} {rng.choice(PATHS)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode("latin-1")
    head += b"".join(h + b"\r\n" for h in rng.sample(HEADERS, rng.randrange(4)))
    body = os.urandom(rng.choice([0, 1, 100, 5000]))
    length = rng.choice([len(body), len(body), 0])  # 0: the body is a second, hostile request
    return head + b"Content-Length: %d\r\n\r\n" % length + body


def test_random_hostile_requests_get_http_answers_and_the_gateway_keeps_serving(s3):
    import random

    rng = random.Random(18)
    c = s3.client()
    c.create_bucket(Bucket="fuzz")
    for _ in range(200):
        try:
            reply = _raw(s3.port, hostile_request(rng))
        except (socket.timeout, ConnectionResetError):
            raise AssertionError("the gateway neither answered nor closed in 10 s") from None
        assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply[:80]
        if reply:
            assert int(reply[9:12]) in range(100, 600)
    assert s3.cluster.proxy.poll() is None
    c.put_object(Bucket="fuzz", Key="after", Body=b"serving")
    assert c.get_object(Bucket="fuzz", Key="after")["Body"].read() == b"serving"
    assert [o["Key"] for o in c.list_objects_v2(Bucket="fuzz")["Contents"]] == ["after"]
    assert "Unhandled" not in s3.cluster.log("proxy") and "Traceback" not in s3.cluster.log("proxy")


def test_an_upload_into_a_bucket_deleted_meanwhile_is_refused_and_keeps_nothing(s3):
    """DeleteBucket while a PutObject's bytes are still coming: the bucket
    is empty then, so it goes; the PUT then answers NoSuchBucket, and a new
    bucket of the same name is empty (the object was not kept unseen)."""
    c = s3.client()
    c.create_bucket(Bucket="racing")
    body = os.urandom(200_000)
    with socket.create_connection(("127.0.0.1", s3.port), timeout=30) as sock:
        sock.sendall(_signed_put(s3, "/racing/obj", len(body)) + body[:100_000])
        time.sleep(0.3)  # the PUT is under way
        c.delete_bucket(Bucket="racing")
        sock.sendall(body[100_000:])
        status, error = _answer(_recv_answer(sock))
    assert status == 404 and b"<Code>NoSuchBucket</Code>" in error
    with s3.cluster.wire() as w:
        assert w.cmd("STAT racing/obj").startswith("ERR notfound")
    c.create_bucket(Bucket="racing")
    assert c.list_objects_v2(Bucket="racing")["KeyCount"] == 0
    c.delete_bucket(Bucket="racing")


def _recv_answer(sock: socket.socket) -> bytes:
    """One whole answer (headers and a body of Content-Length) from ``sock``."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, got
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_complete_of_many_tiny_parts_is_refused_before_it_is_parsed_and_one_of_no_upload_before_its_body(s3):
    """A CompleteMultipartUpload is parsed on the proxy's reactor: a body
    with more elements than 10,000 parts can have is MalformedXML before it
    is parsed; an upload there is not is answered before the body is read,
    and, to a client that waits to be told to send it, without a 100."""
    c = s3.client()
    c.create_bucket(Bucket="complete")
    upload = c.create_multipart_upload(Bucket="complete", Key="k")["UploadId"]
    part = b"<Part><PartNumber>1</PartNumber><ETag>x</ETag></Part>"
    body = b"<CompleteMultipartUpload>" + part * 60_000 + b"</CompleteMultipartUpload>"  # 3 MB
    status, answer = _answer(_raw(s3.port, _signed_body(s3, "POST", f"/complete/k?uploadId={upload}", body)))
    assert status == 400 and b"<Code>MalformedXML</Code>" in answer, answer
    head = _signed(s3, "POST", "/complete/k?uploadId=" + "0" * 32, {
        "Content-Length": str(len(body)), "Expect": "100-continue", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    with socket.create_connection(("127.0.0.1", s3.port), timeout=10) as sock:
        sock.sendall(head)  # and no body: the answer must come without it
        first = b""
        while chunk := sock.recv(65536):
            first += chunk
    assert first.startswith(b"HTTP/1.1 404") and b"<Code>NoSuchUpload</Code>" in first, first[:400]
    c.abort_multipart_upload(Bucket="complete", Key="k", UploadId=upload)


def test_a_refused_put_whose_client_sent_its_body_without_waiting_for_100_is_answered(s3):
    """Expect: 100-continue, then the body at once (curl and botocore send
    it after a second without a 100, any client while the proxy is slow),
    then refused (If-Match on a key there is not): answered at once. The
    proxy logged a critical AttributeError and never answered; the client
    waited out its own timeout."""
    c = s3.client()
    c.create_bucket(Bucket="early100")
    for size in (100, 300_000):  # the body in before the refusal; and still coming
        body = b"x" * size
        head = _signed(s3, "PUT", "/early100/absent", {
            "Content-Length": str(size), "Expect": "100-continue", "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
            "If-Match": '"0123456789abcdef0123456789abcdef"'})
        with socket.create_connection(("127.0.0.1", s3.port), timeout=10) as sock:
            sock.sendall(head + body)
            answer = b""
            while b"</Error>" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        assert answer.split(b" ")[1] == b"404" and b"<Code>NoSuchKey</Code>" in answer, answer[:300]
    assert c.list_objects_v2(Bucket="early100").get("KeyCount") == 0
    assert "AttributeError" not in s3.cluster.log("proxy")


def test_a_refused_body_that_trickles_is_answered_within_seconds_and_its_connection_closed(s3):
    """An unsigned PUT declaring a gigabyte, sent a byte a second: refused
    (AccessDenied) without waiting for a body nobody wants, so a client
    cannot hold a connection for good with a byte now and then."""
    from deposito.s3.request import DISCARD_WAIT

    with socket.create_connection(("127.0.0.1", s3.port), timeout=DISCARD_WAIT + 10) as sock:
        sock.sendall(b"PUT /complete/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        answer = b""
        sock.settimeout(1.0)
        deadline = time.monotonic() + DISCARD_WAIT + 8
        while time.monotonic() < deadline and b"</Error>" not in answer:
            try:
                sock.sendall(b"x")
                answer += sock.recv(65536)
            except socket.timeout:
                pass
            except OSError:
                break
    assert answer.startswith(b"HTTP/1.1 403") and b"<Code>AccessDenied</Code>" in answer, answer[:200]
    assert b"connection: close" in answer.lower()


def test_metadata_with_control_bytes_goes_back_encoded_and_aws_chunked_is_not_kept(s3):
    c = s3.client()
    c.create_bucket(Bucket="metactl")
    put = _signed(s3, "PUT", "/metactl/nul", {"Content-Length": "4", "Connection": "close",
                                              "x-amz-meta-v": "=?UTF-8?B?AGI=?=",
                                              "Content-Encoding": "gzip,aws-chunked",
                                              "x-amz-content-sha256": hashlib.sha256(b"data").hexdigest()})
    assert _raw(s3.port, put + b"data")[9:12] == b"200"
    got = c.get_object(Bucket="metactl", Key="nul")
    assert got["Metadata"]["v"] == "=?UTF-8?B?AGI=?="  # the NUL and the b it stands for, encoded
    raw = _raw(s3.port, _signed(s3, "GET", "/metactl/nul", {"Connection": "close", "x-amz-content-sha256": EMPTY}))
    assert b"\x00" not in raw.partition(b"\r\n\r\n")[0]
    assert got["ContentEncoding"] == "gzip"


def test_part_one_of_an_empty_object_is_the_whole_of_it_and_a_big_delete_of_1000_keys_is_taken(s3):
    c = s3.client()
    c.create_bucket(Bucket="partone")
    c.put_object(Bucket="partone", Key="empty", Body=b"")
    got = c.get_object(Bucket="partone", Key="empty", PartNumber=1)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200 and "ContentRange" not in got
    assert got["Body"].read() == b""
    with pytest.raises(ClientError) as e:  # past its one part
        c.get_object(Bucket="partone", Key="empty", PartNumber=2)
    assert e.value.response["Error"]["Code"] == "InvalidPartNumber"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    keys = [f"{i:04d}" + "&" * 300 for i in range(1000)]  # over 1 MiB once escaped
    c.put_object(Bucket="partone", Key=keys[0], Body=b"x")
    answer = c.delete_objects(Bucket="partone", Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
    assert not answer.get("Errors")
    assert "Contents" not in c.list_objects_v2(Bucket="partone", Prefix="0")


def test_a_client_that_leaves_while_its_upload_starts_leaves_no_traceback(s3):
    c = s3.client()
    c.create_bucket(Bucket="leaves")
    before = len(s3.cluster.log("proxy"))
    for i in range(5):
        _raw(s3.port, _signed_put(s3, f"/leaves/k{i}", 1000), read=False)  # the head alone, then gone
    c.put_object(Bucket="leaves", Key="after", Body=b"still serving")
    time.sleep(1.0)
    said = s3.cluster.log("proxy")[before:]
    assert "Traceback" not in said and "#critical" not in said, said[-3000:]
    assert [o["Key"] for o in c.list_objects_v2(Bucket="leaves")["Contents"]] == ["after"]


def test_a_complete_names_the_upload_of_its_own_key_only(s3):
    """An UploadId is its key's: a Complete sent with it to another key or
    bucket is NoSuchUpload, and nothing is made (before: the other key's
    upload was completed, and the answer named a key that did not exist)."""
    c = s3.client()
    c.create_bucket(Bucket="mp-one")
    c.create_bucket(Bucket="mp-two")
    upload = c.create_multipart_upload(Bucket="mp-one", Key="secret")["UploadId"]
    etag = c.upload_part(Bucket="mp-one", Key="secret", UploadId=upload, PartNumber=1, Body=b"hello")["ETag"]
    for bucket, key in (("mp-two", "other"), ("mp-one", "other")):
        with pytest.raises(ClientError) as e:
            c.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
        assert code(e.value) == "NoSuchUpload"
    for bucket, key in (("mp-one", "secret"), ("mp-two", "other"), ("mp-one", "other")):
        with pytest.raises(ClientError) as e:
            c.head_object(Bucket=bucket, Key=key)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    c.complete_multipart_upload(Bucket="mp-one", Key="secret", UploadId=upload,  # its own key: made
                                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert c.get_object(Bucket="mp-one", Key="secret")["Body"].read() == b"hello"


def _signed_stream(s3, path: str, chunks: list[bytes], corrupt_at: int | None = None) -> tuple[bytes, bytes]:
    """The head and the aws-chunked body (STREAMING-AWS4-HMAC-SHA256-PAYLOAD, each chunk signed) of a PUT."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from deposito.s3.sigv4 import EMPTY_SHA256, sign, signing_key

    framed_length = sum(len(b"%x;chunk-signature=" % len(c)) + 64 + 4 + len(c) for c in chunks + [b""])
    headers = {"Content-Length": str(framed_length), "Content-Encoding": "aws-chunked",
               "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
               "x-amz-decoded-content-length": str(sum(map(len, chunks)))}

    class AsStated(S3SigV4Auth):
        def payload(self, request):
            return headers["x-amz-content-sha256"]

    request = AWSRequest("PUT", s3.url + path, headers=headers)
    AsStated(Credentials(ACCESS, SECRET), "s3", "us-east-1").add_auth(request)
    previous = request.headers["Authorization"].rsplit("Signature=", 1)[1]
    when = request.headers["X-Amz-Date"]
    key = signing_key(SECRET, when[:8], "us-east-1")
    body = b""
    for data in chunks + [b""]:
        previous = sign(key, "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", when, f"{when[:8]}/us-east-1/s3/aws4_request",
                                        previous, EMPTY_SHA256, hashlib.sha256(data).hexdigest())))
        body += b"%x;chunk-signature=%s\r\n" % (len(data), previous.encode()) + data + b"\r\n"
    if corrupt_at is not None:
        body = body[:corrupt_at] + bytes([body[corrupt_at] ^ 1]) + body[corrupt_at + 1:]
    head = f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{s3.port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
    return (head + "\r\n").encode(), body


def _answer_while_waiting(s3, request: bytes, wait: float) -> bytes:
    """What the gateway answers to ``request`` (a head and part of a body) within ``wait`` seconds."""
    with socket.create_connection(("127.0.0.1", s3.port), timeout=wait) as sock:
        sock.sendall(request)
        reply = b""
        try:
            while b"</Error>" not in reply and (chunk := sock.recv(65536)):
                reply += chunk
        except socket.timeout:
            pass
    return reply


def test_an_error_found_mid_body_is_answered_without_waiting_for_the_rest(s3):
    """A body refused part way (a chunk whose signature does not hold; an XML
    body past its limit) is answered as a body refused from its headers is,
    once DISCARD_LIMIT was thrown away, with its own error (before: only
    once the whole declared body had come; a client waiting for the answer
    got RequestTimeout after 60 s)."""
    from deposito.s3.request import DISCARD_WAIT

    c = s3.client()
    c.create_bucket(Bucket="midway")
    head, body = _signed_stream(s3, "/midway/k", [b"a" * (64 << 10)] * 160, corrupt_at=200)  # 10 MiB
    reply = _answer_while_waiting(s3, head + body[:3 * MiB], DISCARD_WAIT + 10)
    assert reply.startswith(b"HTTP/1.1 403") and b"<Code>SignatureDoesNotMatch</Code>" in reply, reply[:300]
    head = _signed(s3, "POST", "/midway?delete", {"Content-Length": str(1 << 30),
                                                  "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    reply = _answer_while_waiting(s3, head + b"<Delete>" + b" " * (10 * MiB), DISCARD_WAIT + 10)
    assert reply.startswith(b"HTTP/1.1 400") and b"<Code>EntityTooLarge</Code>" in reply, reply[:300]
    with pytest.raises(ClientError) as e:
        c.head_object(Bucket="midway", Key="k")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_a_date_past_year_9999_in_utc_is_access_denied_not_an_internal_error(s3):
    """Date (no x-amz-date) valid in its own zone but past 9999-12-31 in UTC:
    403 AccessDenied (before: 500, an OverflowError)."""
    authorization = (f"AWS4-HMAC-SHA256 Credential={ACCESS}/99991231/us-east-1/s3/aws4_request, "
                     "SignedHeaders=date;host;x-amz-content-sha256, Signature=" + "0" * 64)
    status, document = _answer(_raw(s3.port, (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{s3.port}\r\nDate: Fri, 31 Dec 9999 23:00:00 -0500\r\n"
        f"x-amz-content-sha256: UNSIGNED-PAYLOAD\r\nAuthorization: {authorization}\r\n"
        "Connection: close\r\n\r\n").encode()))
    assert status == 403 and b"<Code>AccessDenied</Code>" in document, document


def test_a_copy_whose_source_matches_its_etag_is_made_whatever_its_unmodified_since(s3):
    """CopyObject, as S3: copy-source-if-match true and -if-unmodified-since
    false copies; if-none-match true and -if-modified-since false too
    (before: 412 PreconditionFailed); a failing ETag condition still fails."""
    c = s3.client()
    c.create_bucket(Bucket="copy-cond")
    etag = c.put_object(Bucket="copy-cond", Key="src", Body=b"source")["ETag"]
    long_ago = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    source = {"Bucket": "copy-cond", "Key": "src"}
    c.copy_object(Bucket="copy-cond", Key="dst", CopySource=source, CopySourceIfMatch=etag,
                  CopySourceIfUnmodifiedSince=long_ago)
    assert c.get_object(Bucket="copy-cond", Key="dst")["Body"].read() == b"source"
    c.copy_object(Bucket="copy-cond", Key="dst2", CopySource=source, CopySourceIfNoneMatch='"other"',
                  CopySourceIfModifiedSince=later)
    assert c.get_object(Bucket="copy-cond", Key="dst2")["Body"].read() == b"source"
    with pytest.raises(ClientError) as e:
        c.copy_object(Bucket="copy-cond", Key="dst3", CopySource=source, CopySourceIfMatch='"other"',
                      CopySourceIfUnmodifiedSince=later)
    assert code(e.value) == "PreconditionFailed"


def test_an_aws_chunked_delete_objects_body_is_read_decoded(s3):
    """A DeleteObjects body sent aws-chunked with a CRC32 trailer is parsed
    as it is checked, decoded (before: parsed still framed, MalformedXML)."""
    import io

    from botocore.httpchecksum import AwsChunkedWrapper, CrtCrc32Checksum

    c = s3.client()
    c.create_bucket(Bucket="chunked-xml")
    c.put_object(Bucket="chunked-xml", Key="gone", Body=b"x")
    xml = b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>gone</Key></Object></Delete>'
    framed = AwsChunkedWrapper(io.BytesIO(xml), checksum_cls=CrtCrc32Checksum,
                               checksum_name="x-amz-checksum-crc32").read()
    status, document = _answer(_raw(s3.port, _signed(s3, "POST", "/chunked-xml?delete", {
        "Content-Length": str(len(framed)), "Content-Encoding": "aws-chunked", "Connection": "close",
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "x-amz-trailer": "x-amz-checksum-crc32",
        "x-amz-decoded-content-length": str(len(xml))}) + framed))
    assert status == 200 and b"<Deleted><Key>gone</Key>" in document, document
    with pytest.raises(ClientError) as e:
        c.head_object(Bucket="chunked-xml", Key="gone")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
