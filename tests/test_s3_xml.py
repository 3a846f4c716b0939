"""The S3 XML, judged by botocore: what we write, botocore's own parser for the
S3 service model reads back as the values given; what botocore writes for
DeleteObjects and CompleteMultipartUpload, we read back as what was sent."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote_plus
from xml.etree import ElementTree

import botocore.session
import pytest
from botocore import handlers
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from hypothesis import given, settings
from hypothesis import strategies as st

from deposito.s3 import xmlread, xmlwire
from deposito.s3.errors import ERRORS, S3Error
from deposito.s3.xmlread import ObjectToDelete
from deposito.s3.xmlwire import (
    BucketEntry, Deleted, DeleteFailure, ObjectEntry, Owner, PartEntry, UploadEntry,
)

S3 = botocore.session.get_session().get_service_model("s3")

WHEN = datetime(2024, 5, 17, 9, 30, 1, 234000, tzinfo=timezone.utc)
LATER = datetime(2025, 1, 2, 3, 4, 5, 6000, tzinfo=timezone.utc)

# Keys S3 allows that XML makes hard: markup, quotes, CR (which XML turns into
# LF unless escaped), spaces at the ends, CDATA's end, a plus and a percent
# (which URL decoding could mistake), and text beyond the BMP.
ODD_KEYS = ["a<b>&c", 'q"u\'ote', "cr\rlf\n", "  spaced  ", "]]>", "plus+and%20", "tab\there",
            "日本語/ファイル", "emoji 😀/x", "x" * 1024]


def parse(operation: str, body: bytes, status: int = 200) -> dict[str, Any]:
    """``body`` as botocore reads the answer to ``operation``."""
    output = S3.operation_model(operation).output_shape
    return create_parser("rest-xml").parse({"body": body, "headers": {}, "status_code": status}, output)


def url_decoded_v2(parsed: dict[str, Any]) -> dict[str, Any]:
    """What boto3 hands its caller after it asked for EncodingType=url itself."""
    handlers.decode_list_object_v2(parsed, context={"encoding_type_auto_set": True})
    return parsed


def serialize(operation: str, params: dict[str, Any]) -> bytes:
    request = create_serializer("rest-xml").serialize_to_request(params, S3.operation_model(operation))
    body = request["body"]
    return body if isinstance(body, bytes) else body.encode("utf-8")


# Errors.

def test_every_code_has_a_client_or_server_status_and_a_message() -> None:
    assert {"NoSuchKey", "NoSuchBucket", "BucketNotEmpty", "SignatureDoesNotMatch", "InvalidAccessKeyId",
            "AuthorizationHeaderMalformed", "XAmzContentSHA256Mismatch"} <= set(ERRORS)
    for code, kind in ERRORS.items():
        assert 400 <= kind.status <= 599, code
        assert kind.message, code
    assert S3Error("NoSuchKey").status == 404
    assert S3Error("InvalidRange").status == 416
    assert S3Error("NotImplemented").status == 501
    assert S3Error("MissingContentLength").status == 411


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_error_documents_read_by_botocore(code: str) -> None:
    error = S3Error(code, resource="/bucket/a<&>key")
    parsed = parse("GetObject", xmlwire.error_document(error, "4442587FB7D0A2F9"), status=error.status)
    assert parsed["Error"]["Code"] == code
    assert parsed["Error"]["Message"] == ERRORS[code].message
    assert parsed["Error"]["Resource"] == "/bucket/a<&>key"
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == ERRORS[code].status
    # botocore takes the request id from the x-amz-request-id header; the body repeats it
    assert ElementTree.fromstring(xmlwire.error_document(error, "4442587FB7D0A2F9")).findtext(
        "RequestId") == "4442587FB7D0A2F9"


def test_error_document_as_s3_writes_it() -> None:
    error = S3Error("NoSuchKey", "gone", resource="/b/k", Key="k&")
    assert xmlwire.error_document(error, "RID", host_id="HID") == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b"<Error><Code>NoSuchKey</Code><Message>gone</Message><Key>k&amp;</Key>"
        b"<Resource>/b/k</Resource><RequestId>RID</RequestId><HostId>HID</HostId></Error>")
    parsed = parse("GetObject", xmlwire.error_document(error, "RID"), status=404)
    assert parsed["Error"]["Key"] == "k&"


def test_an_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        S3Error("NoSuchThing")


# Responses.

def test_list_buckets() -> None:
    body = xmlwire.list_buckets_result(Owner("owner-id", "me"), [BucketEntry("alpha", WHEN),
                                                                 BucketEntry("beta", LATER.timestamp())])
    parsed = parse("ListBuckets", body)
    assert parsed["Owner"] == {"ID": "owner-id", "DisplayName": "me"}
    assert parsed["Buckets"] == [{"Name": "alpha", "CreationDate": WHEN},
                                 {"Name": "beta", "CreationDate": LATER}]


def test_timestamps_have_milliseconds_and_z() -> None:
    assert xmlwire.timestamp(WHEN) == "2024-05-17T09:30:01.234Z"
    assert xmlwire.timestamp(0.5) == "1970-01-01T00:00:00.500Z"
    assert xmlwire.timestamp(1715938201.234) == "2024-05-17T09:30:01.234Z"
    assert xmlwire.timestamp(datetime(2024, 5, 17, 9, 30, 1)) == "2024-05-17T09:30:01.000Z"


def entries(keys: list[str]) -> list[ObjectEntry]:
    return [ObjectEntry(key, WHEN, f"{index:032x}", index * 100) for index, key in enumerate(keys)]


def contents(parsed: dict[str, Any]) -> list[tuple[str, datetime, str, int, str]]:
    return [(entry["Key"], entry["LastModified"], entry["ETag"], entry["Size"], entry["StorageClass"])
            for entry in parsed.get("Contents", [])]


def expected(keys: list[str]) -> list[tuple[str, datetime, str, int, str]]:
    return [(key, WHEN, f'"{index:032x}"', index * 100, "STANDARD") for index, key in enumerate(keys)]


def test_list_objects_v2_odd_keys_in_plain_xml() -> None:
    body = xmlwire.list_objects_v2_result(
        "bucket", entries(ODD_KEYS), ["dir<&>/", "other/"], prefix="", delimiter="/", max_keys=50,
        is_truncated=True, continuation_token="dG9rZW4", next_continuation_token="bmV4dA", start_after="a&b")
    parsed = parse("ListObjectsV2", body)
    assert contents(parsed) == expected(ODD_KEYS)
    assert parsed["CommonPrefixes"] == [{"Prefix": "dir<&>/"}, {"Prefix": "other/"}]
    assert (parsed["Name"], parsed["Prefix"], parsed["Delimiter"], parsed["MaxKeys"]) == ("bucket", "", "/", 50)
    assert parsed["KeyCount"] == len(ODD_KEYS) + 2
    assert parsed["IsTruncated"] is True
    assert parsed["ContinuationToken"] == "dG9rZW4"
    assert parsed["NextContinuationToken"] == "bmV4dA"
    assert parsed["StartAfter"] == "a&b"
    assert "EncodingType" not in parsed


def test_list_objects_v2_url_encoded_as_boto3_reads_it() -> None:
    keys = ODD_KEYS + ["control\x01\x1f\x7f", "\ufffe\uffff"]
    body = xmlwire.list_objects_v2_result(
        "bucket", entries(keys), ["pre fix/\x02/"], prefix="pre fix/", delimiter="/", start_after="+\x03",
        encoding_type="url")
    assert b"\x01" not in body and b" " not in body.split(b"<Contents>", 1)[1]
    parsed = url_decoded_v2(parse("ListObjectsV2", body))
    assert parsed["EncodingType"] == "url"
    assert contents(parsed) == expected(keys)
    assert parsed["CommonPrefixes"] == [{"Prefix": "pre fix/\x02/"}]
    assert (parsed["Prefix"], parsed["Delimiter"], parsed["StartAfter"]) == ("pre fix/", "/", "+\x03")


def test_characters_xml_cannot_carry_give_well_formed_documents() -> None:
    keys = ["a\x00b", "c\x01\x08\x0b\x0c\x1fd", "\ud800lone", "\ufffe\uffff"]
    parsed = parse("ListObjectsV2", xmlwire.list_objects_v2_result("bucket", entries(keys)))
    assert [entry["Key"] for entry in parsed["Contents"]] == [
        "a\ufffdb", "c\ufffd\ufffd\ufffd\ufffd\ufffdd", "\ufffdlone", "\ufffd\ufffd"]


def test_an_encoding_type_other_than_url_is_refused() -> None:
    with pytest.raises(S3Error) as caught:
        xmlwire.list_objects_v2_result("bucket", [], encoding_type="base64")
    assert caught.value.code == "InvalidArgument"


def test_list_objects_v1() -> None:
    keys = ["a&1", "a b+2", "a\x053"]
    body = xmlwire.list_objects_result("bucket", entries(keys), ["a/"], prefix="a", delimiter="/", max_keys=3,
                                       is_truncated=True, marker="a ", next_marker="a\x053",
                                       encoding_type="url")
    parsed = parse("ListObjects", body)
    handlers.decode_list_object(parsed, context={"encoding_type_auto_set": True})
    assert contents(parsed) == expected(keys)
    assert (parsed["Marker"], parsed["NextMarker"], parsed["Delimiter"]) == ("a ", "a\x053", "/")
    assert unquote_plus(parsed["Prefix"]) == "a"  # botocore does not decode v1's Prefix; S3 encodes it
    assert parsed["CommonPrefixes"] == [{"Prefix": "a/"}]
    assert parsed["IsTruncated"] is True and parsed["MaxKeys"] == 3

    plain = parse("ListObjects", xmlwire.list_objects_result("bucket", entries(["<&>"]), marker="<"))
    assert contents(plain) == expected(["<&>"])
    assert plain["Marker"] == "<" and plain["IsTruncated"] is False and "NextMarker" not in plain


def test_list_objects_with_owner() -> None:
    entry = ObjectEntry("k", WHEN, '"abc"', 1, owner=Owner("id", "name"))
    parsed = parse("ListObjectsV2", xmlwire.list_objects_v2_result("bucket", [entry]))
    assert parsed["Contents"][0]["Owner"] == {"ID": "id", "DisplayName": "name"}
    assert parsed["Contents"][0]["ETag"] == '"abc"'


def test_copy_results() -> None:
    parsed = parse("CopyObject", xmlwire.copy_object_result("d41d8cd98f00b204e9800998ecf8427e", WHEN))
    assert parsed["CopyObjectResult"]["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'
    assert parsed["CopyObjectResult"]["LastModified"] == WHEN
    parsed = parse("UploadPartCopy", xmlwire.copy_part_result('"abc-2"', LATER))
    assert parsed["CopyPartResult"] == {"ETag": '"abc-2"', "LastModified": LATER}


def test_multipart_results() -> None:
    key = ODD_KEYS[0] + ODD_KEYS[1]
    parsed = parse("CreateMultipartUpload", xmlwire.initiate_multipart_upload_result("bucket", key, "up&1"))
    assert (parsed["Bucket"], parsed["Key"], parsed["UploadId"]) == ("bucket", key, "up&1")
    parsed = parse("CompleteMultipartUpload", xmlwire.complete_multipart_upload_result(
        "http://127.0.0.1:7090/bucket/a%3Cb", "bucket", key, "0123-2"))
    assert (parsed["Location"], parsed["Bucket"], parsed["Key"], parsed["ETag"]) == (
        "http://127.0.0.1:7090/bucket/a%3Cb", "bucket", key, '"0123-2"')


def test_list_parts() -> None:
    parts = [PartEntry(1, WHEN, "aa", 5 * 1024 * 1024), PartEntry(3, LATER, '"bb"', 7)]
    body = xmlwire.list_parts_result("bucket", "k<", "up", parts, part_number_marker=0,
                                     next_part_number_marker=3, max_parts=2, is_truncated=True,
                                     owner=Owner("id", "me"))
    parsed = parse("ListParts", body)
    assert (parsed["Bucket"], parsed["Key"], parsed["UploadId"]) == ("bucket", "k<", "up")
    assert parsed["Parts"] == [
        {"PartNumber": 1, "LastModified": WHEN, "ETag": '"aa"', "Size": 5 * 1024 * 1024},
        {"PartNumber": 3, "LastModified": LATER, "ETag": '"bb"', "Size": 7}]
    assert (parsed["PartNumberMarker"], parsed["NextPartNumberMarker"], parsed["MaxParts"]) == (0, 3, 2)
    assert parsed["IsTruncated"] is True
    assert parsed["Initiator"] == {"ID": "id", "DisplayName": "me"} and parsed["StorageClass"] == "STANDARD"


def test_list_multipart_uploads() -> None:
    uploads = [UploadEntry("a b", "u1", WHEN), UploadEntry("a\x01", "u2", LATER, owner=Owner("id", "me"))]
    body = xmlwire.list_multipart_uploads_result(
        "bucket", uploads, ["a/"], prefix="a", delimiter="/", key_marker="", next_key_marker="a\x01",
        next_upload_id_marker="u2", max_uploads=2, is_truncated=True, encoding_type="url")
    parsed = parse("ListMultipartUploads", body)
    assert [(unquote_plus(u["Key"]), u["UploadId"], u["Initiated"]) for u in parsed["Uploads"]] == [
        ("a b", "u1", WHEN), ("a\x01", "u2", LATER)]
    assert parsed["Uploads"][1]["Owner"] == {"ID": "id", "DisplayName": "me"}
    assert unquote_plus(parsed["NextKeyMarker"]) == "a\x01"
    assert (parsed["NextUploadIdMarker"], parsed["MaxUploads"], parsed["IsTruncated"]) == ("u2", 2, True)
    assert parsed["CommonPrefixes"] == [{"Prefix": "a/"}] and parsed["EncodingType"] == "url"


def test_delete_result() -> None:
    deleted = [Deleted("a&"), Deleted("b", version_id="v1")]
    failures = [DeleteFailure("c<", "AccessDenied", "Access Denied")]
    parsed = parse("DeleteObjects", xmlwire.delete_result(deleted, failures))
    assert parsed["Deleted"] == [{"Key": "a&"}, {"Key": "b", "VersionId": "v1"}]
    assert parsed["Errors"] == [{"Key": "c<", "Code": "AccessDenied", "Message": "Access Denied"}]
    quiet = parse("DeleteObjects", xmlwire.delete_result(deleted, failures, quiet=True))
    assert "Deleted" not in quiet and quiet["Errors"] == parsed["Errors"]
    assert "Deleted" not in parse("DeleteObjects", xmlwire.delete_result(deleted, [], quiet=True))


@pytest.mark.parametrize("location", [None, "eu-west-1"])
def test_location_constraint(location: str | None) -> None:
    body = xmlwire.location_constraint(location)
    parsed: dict[str, Any] = {}
    handlers.parse_get_bucket_location(parsed, SimpleNamespace(raw=object(), content=body))
    assert parsed["LocationConstraint"] == location


# Requests.

# botocore writes a carriage return in a key raw, and XML reads a raw CR as LF
# (Amazon S3 reads the same body the same way): such keys cannot be named in a
# DeleteObjects sent by boto3, whoever the server.
SENDABLE_KEYS = [key for key in ODD_KEYS if "\r" not in key]


def test_delete_request_from_botocore() -> None:
    objects = [{"Key": key} for key in SENDABLE_KEYS] + [{"Key": "versioned", "VersionId": "v&1"}]
    for quiet in (True, False):
        body = serialize("DeleteObjects", {"Bucket": "b", "Delete": {"Objects": objects, "Quiet": quiet}})
        keys, parsed_quiet = xmlread.parse_delete(body)
        assert keys == [ObjectToDelete(key) for key in SENDABLE_KEYS] + [ObjectToDelete("versioned", "v&1")]
        assert parsed_quiet is quiet
    body = serialize("DeleteObjects", {"Bucket": "b", "Delete": {"Objects": [{"Key": "k"}]}})
    assert xmlread.parse_delete(body) == ([ObjectToDelete("k")], False)


def test_delete_request_of_1000_keys_and_no_more() -> None:
    objects = [{"Key": f"key{index}"} for index in range(1001)]
    keys, _ = xmlread.parse_delete(serialize("DeleteObjects", {"Bucket": "b", "Delete": {"Objects": objects[:1000]}}))
    assert len(keys) == 1000
    assert_malformed(xmlread.parse_delete,
                     serialize("DeleteObjects", {"Bucket": "b", "Delete": {"Objects": objects}}))


def test_complete_request_from_botocore() -> None:
    parts = [{"PartNumber": 1, "ETag": '"aaa"'}, {"PartNumber": 2, "ETag": "bbb"},
             {"PartNumber": 10000, "ETag": '"ccc-3"', "ChecksumCRC32": "AAAAAA=="}]
    body = serialize("CompleteMultipartUpload", {"Bucket": "b", "Key": "k", "UploadId": "u",
                                                 "MultipartUpload": {"Parts": parts}})
    assert xmlread.parse_complete_multipart(body) == [(1, "aaa", {}), (2, "bbb", {}),
                                                      (10000, "ccc-3", {"crc32": "AAAAAA=="})]


def complete_body(*numbers: str) -> bytes:
    parts = "".join(f"<Part><PartNumber>{number}</PartNumber><ETag>e</ETag></Part>" for number in numbers)
    return f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()


@pytest.mark.parametrize("numbers", [("2", "1"), ("1", "3", "2"), ("1", "2", "2", "1")])
def test_complete_parts_out_of_order(numbers: tuple[str, ...]) -> None:
    with pytest.raises(S3Error) as caught:
        xmlread.parse_complete_multipart(complete_body(*numbers))
    assert caught.value.code == "InvalidPartOrder"


def test_a_part_named_twice_in_a_row_keeps_its_later_entry() -> None:
    body = (b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>first</ETag></Part>"
            b"<Part><PartNumber>1</PartNumber><ETag>second</ETag></Part>"
            b"<Part><PartNumber>2</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>")
    assert xmlread.parse_complete_multipart(body) == [(1, "second", {}), (2, "e", {})]


@pytest.mark.parametrize("number", ["0", "10001", "999999"])
def test_complete_part_numbers_out_of_range(number: str) -> None:
    with pytest.raises(S3Error) as caught:
        xmlread.parse_complete_multipart(complete_body("1", number))
    assert caught.value.code == "InvalidArgument"


def test_create_bucket_request() -> None:
    body = serialize("CreateBucket", {"Bucket": "b",
                                      "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}})
    assert xmlread.parse_create_bucket(body) == "eu-west-1"
    assert xmlread.parse_create_bucket(b"") is None
    assert xmlread.parse_create_bucket(b"  \n") is None
    assert xmlread.parse_create_bucket(b"<CreateBucketConfiguration/>") is None
    assert_malformed(xmlread.parse_create_bucket, b"<Delete/>")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Delete><Object><Key>&lol3;</Key></Object></Delete>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Delete><Object><Key>&xxe;</Key></Object></Delete>"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x.dtd"> %p;]>
<Delete><Object><Key>k</Key></Object></Delete>"""
DTD_ONLY = b"""<?xml version="1.0"?><!DOCTYPE Delete SYSTEM "http://127.0.0.1:1/d.dtd">
<Delete><Object><Key>k</Key></Object></Delete>"""
HOSTILE = {
    "billion laughs": BILLION_LAUGHS, "external entity": EXTERNAL_ENTITY,
    "parameter entity": PARAMETER_ENTITY, "external DTD": DTD_ONLY,
    "not XML": b"DELETE ALL THE THINGS", "empty": b"", "truncated": b"<Delete><Object><Key>k</Key>",
    "binary": bytes(range(256)), "bad UTF-8": b"<Delete><Object><Key>\xff\xfe</Key></Object></Delete>",
    "unknown encoding": b'<?xml version="1.0" encoding="x-nonsense"?><Delete/>',
    "wrong root": b"<CompleteMultipartUpload><Object><Key>k</Key></Object></CompleteMultipartUpload>",
    "no keys": b"<Delete><Quiet>true</Quiet></Delete>", "empty key": b"<Delete><Object><Key/></Object></Delete>",
    "no key": b"<Delete><Object><VersionId>v</VersionId></Object></Delete>",
    "two keys in one": b"<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>",
    "quiet nonsense": b"<Delete><Quiet>maybe</Quiet><Object><Key>a</Key></Object></Delete>",
    "over the limit": b"<Delete>" + b" " * xmlread.DELETE_BODY_LIMIT + b"<Object><Key>a</Key></Object></Delete>",
}


def assert_malformed(parser: Any, body: bytes) -> None:
    with pytest.raises(S3Error) as caught:
        parser(body)
    assert caught.value.code == "MalformedXML"
    assert caught.value.status == 400


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_delete_bodies(name: str) -> None:
    assert_malformed(xmlread.parse_delete, HOSTILE[name])


@pytest.mark.parametrize("body", [
    BILLION_LAUGHS.replace(b"Delete", b"CompleteMultipartUpload"), EXTERNAL_ENTITY, b"not xml", b"",
    b"<Delete/>", b"<CompleteMultipartUpload/>",
    b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
    b"<CompleteMultipartUpload><Part><ETag>e</ETag></Part></CompleteMultipartUpload>",
    complete_body("one"), complete_body("-1"), complete_body("\u0661"), complete_body("1.0"),
])
def test_hostile_complete_bodies(body: bytes) -> None:
    assert_malformed(xmlread.parse_complete_multipart, body)


@pytest.mark.parametrize("body", [BILLION_LAUGHS.replace(b"Delete", b"CreateBucketConfiguration"),
                                  EXTERNAL_ENTITY.replace(b"Delete", b"CreateBucketConfiguration"),
                                  b"<CreateBucketConfiguration>", b"garbage"])
def test_hostile_create_bucket_bodies(body: bytes) -> None:
    assert_malformed(xmlread.parse_create_bucket, body)


# Any key S3 allows: any Unicode text (no lone surrogates, which UTF-8 cannot
# carry) of 1 to 1024 bytes of UTF-8.
s3_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=300).filter(
    lambda key: len(key.encode("utf-8")) <= 1024)


@settings(max_examples=200, deadline=None)
@given(st.lists(s3_keys, min_size=1, max_size=5), st.lists(s3_keys, max_size=3), s3_keys)
def test_any_key_round_trips_url_encoded(keys: list[str], prefixes: list[str], prefix: str) -> None:
    body = xmlwire.list_objects_v2_result("bucket", entries(keys), prefixes, prefix=prefix,
                                          delimiter=prefix[-1], start_after=prefix, encoding_type="url")
    parsed = url_decoded_v2(parse("ListObjectsV2", body))
    assert contents(parsed) == expected(keys)
    assert [entry["Prefix"] for entry in parsed.get("CommonPrefixes", [])] == prefixes
    assert (parsed["Prefix"], parsed["Delimiter"], parsed["StartAfter"]) == (prefix, prefix[-1], prefix)


xml_keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"),
                                 exclude_characters="\ufffe\uffff") | st.sampled_from("\t\n\r"),
                   min_size=1, max_size=200)


@settings(max_examples=200, deadline=None)
@given(st.lists(xml_keys, min_size=1, max_size=5))
def test_keys_xml_can_carry_round_trip_plain(keys: list[str]) -> None:
    parsed = parse("ListObjectsV2", xmlwire.list_objects_v2_result("bucket", entries(keys)))
    assert contents(parsed) == expected(keys)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(s3_keys, st.booleans()), min_size=1, max_size=20), st.booleans())
def test_any_keys_botocore_sends_to_delete_come_back(objects: list[tuple[str, bool]], quiet: bool) -> None:
    # botocore writes XML 1.0 for DeleteObjects, so keys with characters XML
    # cannot carry cannot be sent that way by anyone, nor (see above) a CR.
    sendable = [(key, versioned) for key, versioned in objects
                if not xmlwire._NOT_XML.search(key) and "\r" not in key]
    if not sendable:
        return
    params = {"Bucket": "b", "Delete": {"Quiet": quiet, "Objects": [
        {"Key": key, "VersionId": "v1"} if versioned else {"Key": key} for key, versioned in sendable]}}
    keys, parsed_quiet = xmlread.parse_delete(serialize("DeleteObjects", params))
    assert keys == [ObjectToDelete(key, "v1" if versioned else None) for key, versioned in sendable]
    assert parsed_quiet is quiet
