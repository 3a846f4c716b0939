"""S3 Signature Version 4 checks, against botocore's own signer and AWS's worked example."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import types
from unittest import mock
from urllib.parse import quote, unquote, urlsplit

import attrs
import pytest
from botocore import httpchecksum
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from deposito.s3.checksums import Checksummer
from deposito.s3.chunked import ChunkedDecoder
from deposito.s3.keys import S3Keys, new_key_pair
from deposito.s3.sigv4 import (
    SIGNED,
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    PayloadCheck,
    S3Error,
    Verified,
    verify,
)

KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEYS = S3Keys({KEY: SECRET, "OTHERKEY": "other secret"})
WHEN = datetime.datetime(2024, 6, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
NOW = WHEN.timestamp()


def _arguments(request: AWSRequest) -> tuple[str, str, str, dict[str, str]]:
    """What a server receives of a signed request: method, raw path, raw query, lower-case headers."""
    url = urlsplit(request.url)
    headers = {name.lower(): value.decode("latin-1") if isinstance(value, bytes) else value
               for name, value in request.headers.items()}
    headers.setdefault("host", url.netloc)
    return request.method, url.path, url.query, headers


def signed(method: str = "GET", path: str = "/bucket/key", query: str = "", headers: dict[str, str] | None = None,
           body: bytes = b"", secret: str = SECRET, region: str = "us-east-1", when: datetime.datetime = WHEN,
           url: str = "http://127.0.0.1:7090", unsigned_payload: bool = False,
           trailer: str | None = None) -> tuple[str, str, str, dict[str, str]]:
    request = AWSRequest(method=method, url=url + path + ("?" + query if query else ""), headers=headers or {},
                         data=body)
    if unsigned_payload:
        request.context["client_config"] = types.SimpleNamespace(s3={"payload_signing_enabled": False})
    if trailer is not None:
        request.context["checksum"] = {"request_algorithm": {"in": "trailer", "name": trailer}}
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        S3SigV4Auth(Credentials(KEY, secret), "s3", region).add_auth(request)
    return _arguments(request)


def presigned(method: str = "GET", path: str = "/bucket/key", expires: int = 3600, secret: str = SECRET,
              when: datetime.datetime = WHEN) -> tuple[str, str, str, dict[str, str]]:
    request = AWSRequest(method=method, url="http://127.0.0.1:7090" + path)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        S3SigV4QueryAuth(Credentials(KEY, secret), "s3", "us-east-1", expires=expires).add_auth(request)
    return _arguments(request)


def refused(code: str, method: str, path: str, query: str, headers: dict[str, str], now: float = NOW) -> S3Error:
    with pytest.raises(S3Error) as caught:
        verify(method, path, query, headers, KEYS, now)
    assert caught.value.code == code, caught.value
    return caught.value


# Keys


def test_keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# S3 keys\n\nAKID1 secret1\n  AKID2   se/cr+et2  \n")
    keys = S3Keys.from_file(str(path))
    assert keys.secret("AKID1") == "secret1"
    assert keys.secret("AKID2") == "se/cr+et2"
    assert keys.secret("nobody") is None


def test_keys_file_saved_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "keys"
    path.write_bytes(b"\xef\xbb\xbf# my keys\nAKID1 secret1\n")
    assert S3Keys.from_file(str(path)).secret("AKID1") == "secret1"
    path.write_bytes(b"\xef\xbb\xbfAKID1 secret1\n")
    assert S3Keys.from_file(str(path)).secret("AKID1") == "secret1"


@pytest.mark.parametrize("text", ["AKID1 secret1\nlonely\n", "AKID1 secret1\nAKID2 a b\n", "AKID1 a\nAKID1 b\n",
                                  "AKID1 secret1\nAKID\u00e92 secret2\n", "AKID1 secret1\nAKID2 se\u200bcret2\n"])
def test_keys_file_malformed_line_named(tmp_path, text):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path}:2"):
        S3Keys.from_file(str(path))


def test_keys_file_empty(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no S3 key"):
        S3Keys.from_file(str(path))


def test_new_key_pair():
    key_id, secret = new_key_pair()
    other = new_key_pair()
    assert len(key_id) == 20 and len(secret) == 40 and key_id.isalnum()
    assert other[0] != key_id and other[1] != secret


# Header-signed requests, signed by botocore


def test_signed_payload():
    body = b"hello, depot"
    verified = verify(*signed("PUT", body=body), KEYS, NOW)
    assert verified.access_key == KEY
    assert verified.payload == SIGNED
    assert verified.content_sha256 == hashlib.sha256(body).hexdigest()
    assert verified.scope == "20240601/us-east-1/s3/aws4_request"


def test_empty_body_get():
    verified = verify(*signed("GET"), KEYS, NOW)
    assert verified.payload == SIGNED and verified.content_sha256 == hashlib.sha256(b"").hexdigest()


def test_unsigned_payload():
    arguments = signed("PUT", body=b"data", url="https://127.0.0.1:7090", unsigned_payload=True)
    assert arguments[3]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    verified = verify(*arguments, KEYS, NOW)
    assert verified.payload == UNSIGNED_PAYLOAD and verified.content_sha256 is None


def test_any_region_is_accepted():
    verified = verify(*signed(region="eu-central-7"), KEYS, NOW)
    assert verified.scope == "20240601/eu-central-7/s3/aws4_request"


@pytest.mark.parametrize("key", [
    "plain.txt", "with space/and more  spaces", "unicode/été/日本語.txt", "plus+sign", "per%cent%20not-escape",
    "tilde~and_under-score", "deep/er/path/", "!$&'()*,;=:@", "a//double",
])
def test_odd_keys(key):
    path = "/bucket/" + quote(key, safe="/~")
    verified = verify(*signed("PUT", path=path, body=b"x"), KEYS, NOW)
    assert verified.access_key == KEY


def test_path_encoded_differently_from_the_canonical_form():
    """A client that leaves '!' or "'" unencoded in the path and signs what it sent is still understood."""
    verified = verify(*signed("GET", path="/bucket/it's!(here)"), KEYS, NOW)
    assert verified.access_key == KEY


@pytest.mark.parametrize("query", [
    "list-type=2&prefix=a%20b&delimiter=%2F",
    "uploads",
    "partNumber=3&uploadId=abc%2Bdef~_.-",
    "prefix=%E6%97%A5%E6%9C%AC&max-keys=10&continuation-token=x%3D%3D",
    "b=2&a=2&a=1",
])
def test_query_strings(query):
    verified = verify(*signed("GET", path="/bucket", query=query), KEYS, NOW)
    assert verified.access_key == KEY


def test_multi_space_header_values_and_metadata():
    headers = {"x-amz-meta-note": "  two   spaces  inside ", "Content-Type": "text/plain", "x-amz-meta-replicas": "3"}
    verify(*signed("PUT", headers=headers, body=b"x"), KEYS, NOW)


def test_date_header_instead_of_x_amz_date():
    arguments = signed("GET", headers={"Date": "whatever, botocore rewrites it"})
    assert "x-amz-date" not in arguments[3]
    assert verify(*arguments, KEYS, NOW).timestamp == "20240601T120000Z"


def test_wrong_secret():
    refused("SignatureDoesNotMatch", *signed("PUT", body=b"x", secret="not the secret"))


def test_unknown_key():
    method, path, query, headers = signed()
    headers["authorization"] = headers["authorization"].replace(KEY, "NOSUCHKEY")
    refused("InvalidAccessKeyId", method, path, query, headers)


def test_tampered_signed_header():
    method, path, query, headers = signed("PUT", headers={"x-amz-meta-replicas": "2"}, body=b"x")
    headers["x-amz-meta-replicas"] = "1"
    refused("SignatureDoesNotMatch", method, path, query, headers)


@pytest.mark.parametrize("change", ["path", "query", "method", "body-hash"])
def test_tampered_request(change):
    method, path, query, headers = signed("PUT", query="partNumber=1&uploadId=u", body=b"x")
    if change == "path":
        path = "/bucket/other"
    elif change == "query":
        query = "partNumber=2&uploadId=u"
    elif change == "method":
        method = "POST"
    else:
        headers["x-amz-content-sha256"] = hashlib.sha256(b"y").hexdigest()
    refused("SignatureDoesNotMatch", method, path, query, headers)


def test_unsigned_amz_header_refused():
    method, path, query, headers = signed("PUT", body=b"x")
    headers["x-amz-meta-replicas"] = "5"
    error = refused("AccessDenied", method, path, query, headers)
    assert "x-amz-meta-replicas" in error.message


@pytest.mark.parametrize("minutes", [16, -16])
def test_clock_skew(minutes):
    refused("RequestTimeTooSkewed", *signed(), now=NOW + minutes * 60)


def test_clock_skew_within_limit():
    verify(*signed(), KEYS, NOW + 14 * 60)


def test_anonymous_refused():
    refused("AccessDenied", "GET", "/bucket/key", "", {"host": "127.0.0.1:7090"})


@pytest.mark.parametrize("authorization, code", [
    ("AWS AKID:signature", "InvalidRequest"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240601/us-east-1/s3/aws4_request", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240601/us-east-1/ec2/aws4_request, SignedHeaders=host, "
     "Signature=" + "0" * 64, "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/2024-06-01/us-east-1/s3/aws4_request, SignedHeaders=host, "
     "Signature=" + "0" * 64, "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240601/us-east-1/s3/aws4_request, SignedHeaders=x-amz-date, "
     "Signature=" + "0" * 64, "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240601/us-east-1/s3/aws4_request, SignedHeaders=host, "
     "Signature=short", "AuthorizationHeaderMalformed"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240531/us-east-1/s3/aws4_request, "
     "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "0" * 64, "AuthorizationHeaderMalformed"),
])
def test_malformed_authorization(authorization, code):
    headers = {"host": "h", "authorization": authorization, "x-amz-date": "20240601T120000Z",
               "x-amz-content-sha256": hashlib.sha256(b"").hexdigest()}
    refused(code, "GET", "/bucket/key", "", headers)


def test_a_field_given_twice_is_malformed_even_when_its_last_value_is_right():
    method, path, query, headers = signed()
    verify(method, path, query, headers, KEYS, NOW)
    authorization = headers["authorization"]
    algorithm, _, fields = authorization.partition(" ")
    for repeated in ("Signature=" + "0" * 64, "SignedHeaders=nonsense;list"):
        refused("AuthorizationHeaderMalformed", method, path, query,
                {**headers, "authorization": f"{algorithm} {repeated}, {fields}"})


def test_two_authorization_headers_are_refused():
    method, path, query, headers = signed()
    refused("InvalidArgument", method, path, query, {**headers, "authorization": [headers["authorization"]] * 2})


def test_missing_content_sha256():
    method, path, query, headers = signed()
    del headers["x-amz-content-sha256"]
    refused("InvalidRequest", method, path, query, headers)


def test_header_values_as_lists():
    method, path, query, headers = signed("PUT", body=b"x")
    as_lists = {name: [value] for name, value in headers.items()}
    assert verify(method, path, query, as_lists, KEYS, NOW).access_key == KEY


# Presigned URLs, signed by botocore


def test_presigned_valid():
    verified = verify(*presigned(), KEYS, NOW + 60)
    assert verified.presigned and verified.payload == UNSIGNED_PAYLOAD and verified.access_key == KEY


def test_presigned_put():
    verify(*presigned("PUT", path="/bucket/with%20space/%E6%97%A5"), KEYS, NOW)


def test_presigned_expired():
    error = refused("AccessDenied", *presigned(expires=600), now=NOW + 601)
    assert error.message == "Request has expired"


def test_presigned_tampered():
    method, path, query, headers = presigned()
    signature = query.rsplit("X-Amz-Signature=", 1)[1]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    refused("SignatureDoesNotMatch", method, path, query.replace(signature, flipped), headers)
    refused("SignatureDoesNotMatch", method, "/bucket/other-key", query, headers)
    refused("SignatureDoesNotMatch", method, path, query.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200"),
            headers)


def test_presigned_with_an_amz_header_it_did_not_sign_is_refused():
    """Else a URL made to upload one key could copy any object into it
    (x-amz-copy-source), or set what the signer never chose."""
    method, path, query, headers = presigned("PUT")
    for extra in ({"x-amz-copy-source": "secret/payroll.csv"}, {"x-amz-meta-replicas": "1"}):
        error = refused("AccessDenied", method, path, query, {**headers, **extra})
        assert "not signed: " + next(iter(extra)) in str(error)
    verify(method, path, query, {**headers, "content-type": "text/plain"}, KEYS, NOW)  # others may come


def test_presigned_wrong_secret():
    refused("SignatureDoesNotMatch", *presigned(secret="wrong"))


def test_presigned_longer_than_a_week():
    refused("AuthorizationQueryParametersError", *presigned(expires=7 * 24 * 3600 + 1))


def test_presigned_missing_parameter():
    method, path, query, headers = presigned()
    query = "&".join(p for p in query.split("&") if not p.startswith("X-Amz-SignedHeaders="))
    refused("AuthorizationQueryParametersError", method, path, query, headers)


def test_both_mechanisms_refused():
    method, path, query, headers = presigned()
    headers["authorization"] = signed()[3]["authorization"]
    refused("InvalidArgument", method, path, query, headers)


# A signed body


def test_payload_check():
    check = PayloadCheck(hashlib.sha256(b"abcdef").hexdigest())
    check.feed(b"abc")
    check.feed(b"def")
    check.finish()
    check = PayloadCheck(hashlib.sha256(b"abcdef").hexdigest())
    check.feed(b"abcdeF")
    with pytest.raises(S3Error) as caught:
        check.finish()
    assert caught.value.code == "XAmzContentSHA256Mismatch"


# Checksums, against botocore's


@pytest.mark.parametrize("algorithm, reference", [
    ("crc32", httpchecksum.CrtCrc32Checksum), ("crc32c", httpchecksum.CrtCrc32cChecksum),
    ("crc64nvme", httpchecksum.CrtCrc64NvmeChecksum), ("sha1", httpchecksum.Sha1Checksum),
    ("sha256", httpchecksum.Sha256Checksum),
])
def test_checksums_match_botocore(algorithm, reference):
    data = bytes(range(256)) * 300
    ours = Checksummer(algorithm)
    theirs = reference()
    for start in range(0, len(data), 7777):
        ours.update(data[start:start + 7777])
        theirs.update(data[start:start + 7777])
    assert ours.digest_b64() == theirs.b64digest()


def test_crc64nvme_check_value():
    """CRC-64/NVME of "123456789" is 0xAE8B14860A799888 (the catalogue's check value)."""
    checksum = Checksummer("crc64nvme")
    checksum.update(b"123456789")
    assert checksum.digest() == bytes.fromhex("AE8B14860A799888")


# aws-chunked: AWS's worked example (STREAMING-AWS4-HMAC-SHA256-PAYLOAD)

AWS_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
AWS_HEADERS = {
    "host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
                     "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                     "x-amz-decoded-content-length;x-amz-storage-class,Signature=" + AWS_SEED,
    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
    "content-length": "66824",
}
AWS_NOW = datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc).timestamp()
AWS_BODY = (b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
            + b"a" * 65536 + b"\r\n"
            + b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"
            + b"a" * 1024 + b"\r\n"
            + b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n")


def aws_example() -> Verified:
    return verify("PUT", "/examplebucket/chunkObject.txt", "", AWS_HEADERS, KEYS, AWS_NOW)


def decode(verified: Verified, body: bytes, pieces: list[int] | None = None) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder(verified)
    out = []
    position = 0
    for size in pieces or []:
        out.append(decoder.feed(body[position:position + size]))
        position += size
    out.append(decoder.feed(body[position:]))
    decoder.finish()
    return b"".join(out), decoder


def chunk_error(verified: Verified, body: bytes) -> S3Error:
    with pytest.raises(S3Error) as caught:
        decode(verified, body)
    return caught.value


def test_aws_example_seed_signature():
    verified = aws_example()
    assert len(AWS_BODY) == 66824
    assert verified.payload == STREAMING_SIGNED
    assert verified.seed_signature == AWS_SEED
    assert verified.decoded_length == 66560


def test_aws_example_chunks():
    data, decoder = decode(aws_example(), AWS_BODY)
    assert data == b"a" * 66560
    assert decoder.length == 66560


@pytest.mark.parametrize("offset", [30, 88 + 100, 65626 + 30, 65626 + 86 + 500, len(AWS_BODY) - 40])
def test_aws_example_corrupted(offset):
    body = bytearray(AWS_BODY)
    body[offset] ^= 0x01
    error = chunk_error(aws_example(), bytes(body))
    assert error.code in ("SignatureDoesNotMatch", "InvalidRequest"), error


def test_aws_example_truncated():
    assert chunk_error(aws_example(), AWS_BODY[:-3]).code == "IncompleteBody"
    assert chunk_error(aws_example(), AWS_BODY[:-200]).code == "IncompleteBody"


def test_aws_example_chunk_dropped():
    first_end = 88 + 65536 + 2
    second_end = first_end + 86 + 1024 + 2
    body = AWS_BODY[first_end:second_end] + AWS_BODY[:first_end] + AWS_BODY[second_end:]
    assert chunk_error(aws_example(), body).code == "SignatureDoesNotMatch"


def test_aws_example_declared_length_must_match():
    verified = aws_example()
    assert chunk_error(attrs_evolve(verified, decoded_length=66561), AWS_BODY).code == "IncompleteBody"
    assert chunk_error(attrs_evolve(verified, decoded_length=1000), AWS_BODY).code == "InvalidRequest"


def attrs_evolve(verified: Verified, **changes: object) -> Verified:
    return attrs.evolve(verified, **changes)  # type: ignore[arg-type]


def test_final_empty_line_may_be_left_out():
    """Some SDKs end the body right after the zero chunk (or the trailers): nothing is missing, so it is accepted."""
    data, _ = decode(aws_example(), AWS_BODY[:-2])
    assert data == b"a" * 66560


def test_chunk_header_too_long():
    body = b"1" + b"0" * 5000 + b"\r\n"
    assert chunk_error(aws_example(), body).code == "InvalidRequest"


def test_bytes_after_the_end():
    assert chunk_error(aws_example(), AWS_BODY + b"more").code == "InvalidRequest"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=70000), max_size=12))
def test_aws_example_in_any_pieces(pieces):
    data, _ = decode(aws_example(), AWS_BODY, pieces)
    assert data == b"a" * 66560


# aws-chunked with an unsigned trailer, as botocore builds it


def botocore_trailer_upload(data: bytes, algorithm: str = "crc32", chunk_size: int = 1000) -> tuple[Verified, bytes]:
    name = f"x-amz-checksum-{algorithm}"
    classes = {"crc32": httpchecksum.CrtCrc32Checksum, "crc32c": httpchecksum.CrtCrc32cChecksum,
               "crc64nvme": httpchecksum.CrtCrc64NvmeChecksum, "sha1": httpchecksum.Sha1Checksum,
               "sha256": httpchecksum.Sha256Checksum}
    body = httpchecksum.AwsChunkedWrapper(io.BytesIO(data), checksum_cls=classes[algorithm], checksum_name=name,
                                          chunk_size=chunk_size).read()
    headers = {"Content-Encoding": "aws-chunked", "X-Amz-Trailer": name,
               "X-Amz-Decoded-Content-Length": str(len(data))}
    arguments = signed("PUT", headers=headers, url="https://127.0.0.1:7090", trailer=name)
    return verify(*arguments, KEYS, NOW), body


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"])
def test_unsigned_trailer(algorithm):
    data = bytes(range(256)) * 40 + b"tail"
    verified, body = botocore_trailer_upload(data, algorithm)
    assert verified.payload == STREAMING_UNSIGNED_TRAILER
    assert verified.trailer == f"x-amz-checksum-{algorithm}"
    decoded, decoder = decode(verified, body)
    assert decoded == data
    reference = Checksummer(algorithm)
    reference.update(data)
    assert decoder.checksums == {verified.trailer: reference.digest_b64()}


def test_unsigned_trailer_corrupted_byte():
    data = b"0123456789" * 500
    verified, body = botocore_trailer_upload(data)
    position = body.index(b"0123456789", 2000)
    corrupted = body[:position] + b"X" + body[position + 1:]
    assert chunk_error(verified, corrupted).code == "BadDigest"


def test_unsigned_trailer_missing():
    data = b"some data"
    verified, body = botocore_trailer_upload(data)
    cut = body.index(b"x-amz-checksum-crc32")
    assert chunk_error(verified, body[:cut] + b"\r\n").code == "InvalidRequest"


def test_unsigned_trailer_invalid_value():
    verified, body = botocore_trailer_upload(b"some data")
    start = body.index(b"x-amz-checksum-crc32:") + len(b"x-amz-checksum-crc32:")
    body = body[:start] + b"!!!!" + body[body.index(b"\r\n", start):]
    assert chunk_error(verified, body).code == "InvalidDigest"


def test_trailers_too_long():
    verified, body = botocore_trailer_upload(b"some data")
    cut = body.index(b"x-amz-checksum-crc32")
    body = body[:cut] + (b"x-amz-checksum-crc32:" + b"A" * 100 + b"\r\n") * 200 + b"\r\n"
    assert chunk_error(verified, body).code == "InvalidRequest"


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=2000),
       st.lists(st.integers(min_value=0, max_value=600), max_size=20))
def test_unsigned_trailer_in_any_pieces(data, chunk_size, pieces):
    verified, body = botocore_trailer_upload(data, "crc32c", chunk_size)
    whole, _ = decode(verified, body)
    split, _ = decode(verified, body, pieces)
    assert whole == split == data


# aws-chunked with signed chunks and a signed trailer (signatures computed here, by the published recipe)


def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signed_trailer_upload(data: bytes, chunk_size: int = 1000) -> tuple[Verified, bytes]:
    name = "x-amz-checksum-crc32"
    headers = {"Content-Encoding": "aws-chunked", "X-Amz-Trailer": name,
               "X-Amz-Content-SHA256": STREAMING_SIGNED_TRAILER,
               "X-Amz-Decoded-Content-Length": str(len(data))}
    method, path, query, received = signed("PUT", headers=headers)
    # botocore replaces x-amz-content-sha256 with the hash of the (empty) body: sign the streaming form by hand.
    received["x-amz-content-sha256"] = STREAMING_SIGNED_TRAILER
    verified = _resign(method, path, received)
    key, scope, timestamp = verified.signing_key, verified.scope, verified.timestamp
    previous = verified.seed_signature
    body = bytearray()
    empty = hashlib.sha256(b"").hexdigest()
    for start in [*range(0, len(data), chunk_size), len(data)]:
        chunk = data[start:start + chunk_size] if start < len(data) else b""
        previous = _sign(key, "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", timestamp, scope, previous, empty,
                                         hashlib.sha256(chunk).hexdigest())))
        body += b"%x;chunk-signature=%s\r\n" % (len(chunk), previous.encode())
        if chunk:
            body += chunk + b"\r\n"
    checksum = Checksummer("crc32")
    checksum.update(data)
    trailer = f"{name}:{checksum.digest_b64()}\n"
    trailer_signature = _sign(key, "\n".join(("AWS4-HMAC-SHA256-TRAILER", timestamp, scope, previous,
                                               hashlib.sha256(trailer.encode()).hexdigest())))
    body += trailer.encode().replace(b"\n", b"\r\n") + b"x-amz-trailer-signature:%s\r\n\r\n" % trailer_signature.encode()
    return verified, bytes(body)


def _resign(method: str, path: str, headers: dict[str, str]) -> Verified:
    """Signs the request again with its streaming x-amz-content-sha256, as an SDK does for this mode."""
    signed_names = sorted(headers.keys() - {"authorization"})
    canonical = "\n".join((method, path, "", "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in signed_names),
                           ";".join(signed_names), STREAMING_SIGNED_TRAILER))
    timestamp = headers["x-amz-date"]
    scope = f"{timestamp[:8]}/us-east-1/s3/aws4_request"
    key = ("AWS4" + SECRET).encode()
    for part in (timestamp[:8], "us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = _sign(key, "\n".join(("AWS4-HMAC-SHA256", timestamp, scope,
                                      hashlib.sha256(canonical.encode()).hexdigest())))
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={KEY}/{scope}, SignedHeaders={';'.join(signed_names)}, "
                                f"Signature={signature}")
    return verify(method, path, "", headers, KEYS, NOW)


def test_signed_trailer():
    data = b"signed chunks and trailer " * 200
    verified, body = signed_trailer_upload(data)
    assert verified.payload == STREAMING_SIGNED_TRAILER
    decoded, decoder = decode(verified, body)
    assert decoded == data
    assert list(decoder.checksums) == ["x-amz-checksum-crc32"]


def test_signed_trailer_tampered_trailer_signature():
    verified, body = signed_trailer_upload(b"data " * 300)
    start = body.index(b"x-amz-trailer-signature:") + len(b"x-amz-trailer-signature:")
    flipped = b"0" if body[start:start + 1] != b"0" else b"1"
    body = body[:start] + flipped + body[start + 1:]
    assert chunk_error(verified, body).code == "SignatureDoesNotMatch"


def test_signed_trailer_missing_trailer_signature():
    verified, body = signed_trailer_upload(b"data " * 300)
    cut = body.index(b"x-amz-trailer-signature:")
    assert chunk_error(verified, body[:cut] + b"\r\n").code == "InvalidRequest"


def test_signed_chunk_without_signature():
    verified, body = signed_trailer_upload(b"data " * 300)
    body = body.replace(b";chunk-signature=", b";chunk-signaturX=", 1)
    assert chunk_error(verified, body).code == "InvalidRequest"


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_signed_trailer_in_any_pieces(data, pieces):
    verified, body = signed_trailer_upload(data, 700)
    whole, _ = decode(verified, body)
    split, _ = decode(verified, body, pieces)
    assert whole == split == data


@pytest.mark.parametrize("wire", ["utf-8", "latin-1"])
def test_a_header_beyond_ascii_verifies_as_sent_in_utf_8_or_latin_1(wire):
    from deposito.s3.objects import header_text

    method, path, query, headers = signed("PUT", headers={"x-amz-meta-place": "café"})
    received = {name: header_text(value.encode(wire)) for name, value in headers.items()}
    assert received["x-amz-meta-place"] == "café"
    assert isinstance(verify(method, path, query, received, KEYS, NOW), Verified)  # raises when it does not hold
    if wire == "utf-8":  # read as Latin-1, the same bytes are another text, whose signature is another
        misread = {name: value.encode(wire).decode("latin-1") for name, value in headers.items()}
        refused("SignatureDoesNotMatch", method, path, query, misread)


@pytest.mark.parametrize("number", ["%C2%B2", "%D9%A3", "%EF%BC%93"])  # superscript two, Arabic-Indic and full-width three
def test_a_number_in_other_digits_than_ascii_is_refused_as_a_number(number):
    method, path, query, headers = presigned()
    refused("AuthorizationQueryParametersError", method, path, query.replace("X-Amz-Expires=3600",
                                                                            "X-Amz-Expires=" + number), headers)
    headers = {"Content-Encoding": "aws-chunked", "X-Amz-Trailer": "x-amz-checksum-crc32",
               "X-Amz-Content-SHA256": STREAMING_SIGNED_TRAILER, "X-Amz-Decoded-Content-Length": unquote(number)}
    method, path, query, received = signed("PUT", headers=headers)
    received["x-amz-content-sha256"] = STREAMING_SIGNED_TRAILER
    with pytest.raises(S3Error) as caught:
        _resign(method, path, received)  # signed as sent, the length and all
    assert caught.value.code == "InvalidArgument" and "decoded-content-length" in str(caught.value), caught.value
