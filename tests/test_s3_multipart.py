"""S3 multipart uploads against a real cluster (twistd processes), driven by
boto3: parts stored as they come, the object made of them at Complete
without copying, read back whole, by range and through the text protocol;
abort and expiry leave nothing on the servers' disks."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import zlib

import pytest
from awscrt import checksums as crt_checksums
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.cluster import Cluster, Wire, free_port, poll
from tests.test_web import fetch
from tests.test_s3_gateway import ACCESS, SECRET, S3, _open, code, get_killing_the_senders

MiB = 1 << 20


@contextlib.contextmanager
def s3_cluster(root, proxy_args=(), server_args=()):
    """A cluster of three servers whose proxy serves S3, with the bucket "multi"."""
    keys = root / "s3-keys"
    keys.write_text(f"{ACCESS} {SECRET}\n")
    port = free_port()
    cluster = Cluster(root, proxy_args=("--s3", f"tcp:{port}:interface=127.0.0.1", "--s3-keys", str(keys),
                                        *proxy_args), server_args=server_args)
    cluster.start(3)
    try:
        assert poll(lambda: _open(port), 10), "the S3 port did not open"
        s3 = S3(cluster, port)
        s3.client().create_bucket(Bucket="multi")
        yield s3
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    http = free_port()
    with s3_cluster(tmp_path_factory.mktemp("s3mp"), proxy_args=(
            "--upload-expiry", "2", "--http", f"tcp:{http}:interface=127.0.0.1")) as s3:
        s3.http = http
        yield s3


def blobs_on_disk(cluster: Cluster) -> set[tuple[str, str]]:
    """Every blob file on every storage server's disk: (server, blob id) each."""
    return {(sid, path.name) for sid in cluster.server_folders() for path in cluster.blob_files(sid)}


def md5_etag(parts: list[bytes]) -> str:
    return '"%s-%d"' % (hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest(), len(parts))


def test_upload_file_and_download_file_of_a_multi_part_file_with_boto3s_default_checksums(s3, tmp_path):
    c = s3.client()
    data = os.urandom(13 * MiB + 12345)
    source, back = tmp_path / "big.bin", tmp_path / "back.bin"
    source.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    c.upload_file(str(source), "multi", "dir/big.bin", Config=config)
    head = c.head_object(Bucket="multi", Key="dir/big.bin")
    parts = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    assert head["ETag"] == md5_etag(parts) and head["ContentLength"] == len(data)
    c.download_file("multi", "dir/big.bin", str(back), Config=config)  # ranged GETs, in parallel
    assert back.read_bytes() == data
    got = c.get_object(Bucket="multi", Key="dir/big.bin", Range=f"bytes={5 * MiB - 10}-{10 * MiB + 9}")
    assert got["Body"].read() == data[5 * MiB - 10:10 * MiB + 10]  # across both part boundaries
    with Wire(s3.cluster.port) as w:  # the same object through the text protocol, whole-file SHA-256 and all
        reply, body = w.get("multi/dir/big.bin")
        assert f"sha256={hashlib.sha256(data).hexdigest()}" in reply and body == data
        assert w.multi("LIST") == [f"{len(data)} 2 2 multi/dir/big.bin"]  # no part
        assert w.cmd("LIST \x01") == "ERR badargs control character in prefix"  # nor where the parts' names are
        stat = w.stat("multi/dir/big.bin")
        assert (stat["have"], stat["size"], stat["sha256"]) == ("2", str(len(data)), hashlib.sha256(data).hexdigest())
    status, _, body = fetch(s3.http, "/files/multi%2Fdir%2Fbig.bin")  # and through HTTP, whole and in a range
    assert status == 200 and body == data
    status, headers, body = fetch(s3.http, "/files/multi%2Fdir%2Fbig.bin", headers={"Range": "bytes=5242870-5242899"})
    assert status == 206 and body == data[5242870:5242900]
    listed = c.list_objects_v2(Bucket="multi", Prefix="dir/")["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [("dir/big.bin", len(data), head["ETag"])]
    held = blobs_on_disk(s3.cluster)
    assert len(held) == 2 * 4  # three parts and the manifest, two copies each
    c.delete_object(Bucket="multi", Key="dir/big.bin")
    assert poll(lambda: not blobs_on_disk(s3.cluster) & held, 20), "the deleted object's blobs are still on disk"


def test_parts_listed_chosen_replaced_and_checked_at_complete(s3):
    c = s3.client()
    upload = c.create_multipart_upload(Bucket="multi", Key="made.bin", ContentType="text/plain",
                                       Metadata={"owner": "me"})["UploadId"]
    one, two, three = os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"
    e1 = c.upload_part(Bucket="multi", Key="made.bin", UploadId=upload, PartNumber=1, Body=one)["ETag"]
    c.upload_part(Bucket="multi", Key="made.bin", UploadId=upload, PartNumber=2, Body=b"first try")
    e2 = c.upload_part(Bucket="multi", Key="made.bin", UploadId=upload, PartNumber=2, Body=two)["ETag"]
    e3 = c.upload_part(Bucket="multi", Key="made.bin", UploadId=upload, PartNumber=3, Body=three)["ETag"]
    small = c.upload_part(Bucket="multi", Key="made.bin", UploadId=upload, PartNumber=4, Body=b"small")["ETag"]
    assert e1 == '"%s"' % hashlib.md5(one).hexdigest()
    listed = c.list_parts(Bucket="multi", Key="made.bin", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
        (1, e1, len(one)), (2, e2, len(two)), (3, e3, 4), (4, small, 5)]
    page = c.list_parts(Bucket="multi", Key="made.bin", UploadId=upload, MaxParts=2, PartNumberMarker=1)
    assert [p["PartNumber"] for p in page["Parts"]] == [2, 3] and page["IsTruncated"]
    uploads = c.list_multipart_uploads(Bucket="multi")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("made.bin", upload)]
    with pytest.raises(ClientError) as e:  # the ETag of part 2 before it was replaced
        c.complete_multipart_upload(Bucket="multi", Key="made.bin", UploadId=upload, MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": '"%s"' % hashlib.md5(b"first try").hexdigest()}]})
    assert code(e.value) == "InvalidPart"
    with pytest.raises(ClientError) as e:  # a part under 5 MiB that is not the last
        c.complete_multipart_upload(Bucket="multi", Key="made.bin", UploadId=upload, MultipartUpload={"Parts": [
            {"PartNumber": 3, "ETag": e3}, {"PartNumber": 4, "ETag": small}]})
    assert code(e.value) == "EntityTooSmall"
    with pytest.raises(ClientError) as e:
        c.head_object(Bucket="multi", Key="made.bin")
    assert e.value.response["Error"]["Code"] == "404"  # nothing visible before a Complete that holds
    chosen = {"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}, {"PartNumber": 3, "ETag": e3}]}
    done = c.complete_multipart_upload(Bucket="multi", Key="made.bin", UploadId=upload, MultipartUpload=chosen)
    assert done["ETag"] == md5_etag([one, two, three])
    again = c.complete_multipart_upload(Bucket="multi", Key="made.bin", UploadId=upload, MultipartUpload=chosen)
    assert again["ETag"] == done["ETag"]  # a Complete sent again (its answer lost) answers the same
    got = c.get_object(Bucket="multi", Key="made.bin")
    assert got["Body"].read() == one + two + three
    assert got["ContentType"] == "text/plain" and got["Metadata"] == {"owner": "me"}
    second = c.get_object(Bucket="multi", Key="made.bin", PartNumber=2)  # one part, by its number
    assert (second["PartsCount"], second["ContentLength"], second["ETag"]) == (3, len(two), done["ETag"])
    assert second["Body"].read() == two
    assert c.head_object(Bucket="multi", Key="made.bin", PartNumber=3)["ContentLength"] == 4
    with pytest.raises(ClientError) as e:
        c.get_object(Bucket="multi", Key="made.bin", PartNumber=4)
    assert code(e.value) == "InvalidPartNumber" and e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    assert c.list_multipart_uploads(Bucket="multi").get("Uploads", []) == []
    with pytest.raises(ClientError) as e:
        c.list_parts(Bucket="multi", Key="made.bin", UploadId=upload)
    assert code(e.value) == "NoSuchUpload"
    c.delete_object(Bucket="multi", Key="made.bin")


def test_object_attributes_page_through_the_parts_of_a_multipart_object(s3):
    c = s3.client()
    bodies = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1000)]
    upload = c.create_multipart_upload(Bucket="multi", Key="attrs")["UploadId"]
    parts = [{"PartNumber": n, "ETag": c.upload_part(Bucket="multi", Key="attrs", UploadId=upload, PartNumber=n,
                                                    Body=body)["ETag"]} for n, body in enumerate(bodies, 1)]
    c.complete_multipart_upload(Bucket="multi", Key="attrs", UploadId=upload, MultipartUpload={"Parts": parts})
    every = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]
    got = c.get_object_attributes(Bucket="multi", Key="attrs", ObjectAttributes=every)
    assert '"%s"' % got["ETag"] == md5_etag(bodies)  # sent without quotes, as S3 sends it
    assert (got["ObjectSize"], got["StorageClass"]) == (sum(map(len, bodies)), "STANDARD")
    assert "Checksum" not in got  # none is kept of a whole object
    assert got["ObjectParts"]["TotalPartsCount"] == 3 and not got["ObjectParts"]["IsTruncated"]
    assert [(p["PartNumber"], p["Size"]) for p in got["ObjectParts"]["Parts"]] == [(1, 5 * MiB), (2, 5 * MiB),
                                                                                    (3, 1000)]
    page = c.get_object_attributes(Bucket="multi", Key="attrs", ObjectAttributes=["ObjectParts"], MaxParts=1,
                                   PartNumberMarker=1)
    assert "ETag" not in page and "ObjectSize" not in page
    assert page["ObjectParts"]["IsTruncated"] and page["ObjectParts"]["NextPartNumberMarker"] == 2
    assert [(p["PartNumber"], p["Size"]) for p in page["ObjectParts"]["Parts"]] == [(2, 5 * MiB)]
    # an object of one body has no parts to show
    c.put_object(Bucket="multi", Key="plain", Body=b"plain bytes")
    got = c.get_object_attributes(Bucket="multi", Key="plain", ObjectAttributes=every)
    assert (got["ObjectSize"], "ObjectParts" in got) == (11, False)
    assert '"%s"' % got["ETag"] == c.head_object(Bucket="multi", Key="plain")["ETag"]
    for key, asked, error in (("plain", ["Colour"], "InvalidArgument"), ("absent", ["ETag"], "NoSuchKey")):
        with pytest.raises(ClientError) as e:
            c.get_object_attributes(Bucket="multi", Key=key, ObjectAttributes=asked)
        assert code(e.value) == error


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def test_an_upload_asking_for_a_checksum_gives_its_object_one_made_of_its_parts(s3):
    """COMPOSITE (CRC32, as boto3 asks by default): the checksum of the parts'
    checksums, with -N; FULL_OBJECT (CRC-64/NVME): the CRC of all the bytes.
    Both are checked against those the client names at Complete."""
    c = s3.client()
    bodies = [os.urandom(5 * MiB), os.urandom(3000)]
    crc32s = [zlib.crc32(body).to_bytes(4, "big") for body in bodies]
    composite = _b64(zlib.crc32(b"".join(crc32s)).to_bytes(4, "big")) + "-2"
    created = c.create_multipart_upload(Bucket="multi", Key="composite", ChecksumAlgorithm="CRC32")
    assert (created["ChecksumAlgorithm"], created["ChecksumType"]) == ("CRC32", "COMPOSITE")
    upload = created["UploadId"]
    with pytest.raises(ClientError) as e:  # a part without the upload's checksum
        c.upload_part(Bucket="multi", Key="composite", UploadId=upload, PartNumber=1, Body=bodies[0],
                      ChecksumAlgorithm="SHA256")
    assert code(e.value) == "InvalidRequest"
    parts = []
    for n, body in enumerate(bodies, 1):
        sent = c.upload_part(Bucket="multi", Key="composite", UploadId=upload, PartNumber=n, Body=body,
                             ChecksumAlgorithm="CRC32")
        assert sent["ChecksumCRC32"] == _b64(crc32s[n - 1])
        parts.append({"PartNumber": n, "ETag": sent["ETag"], "ChecksumCRC32": sent["ChecksumCRC32"]})
    listed = c.list_parts(Bucket="multi", Key="composite", UploadId=upload)
    assert listed["ChecksumAlgorithm"] == "CRC32"
    assert [p["ChecksumCRC32"] for p in listed["Parts"]] == [_b64(crc) for crc in crc32s]
    for wrong in ({"ChecksumCRC32": "AAAAAA==-2"}, {"MultipartUpload": {"Parts": [
            {**parts[0], "ChecksumCRC32": _b64(crc32s[1])}, parts[1]]}}):
        with pytest.raises(ClientError) as e:
            c.complete_multipart_upload(**{"Bucket": "multi", "Key": "composite", "UploadId": upload,
                                           "MultipartUpload": {"Parts": parts}, **wrong})
        assert code(e.value) == "BadDigest", wrong
    done = c.complete_multipart_upload(Bucket="multi", Key="composite", UploadId=upload,
                                       MultipartUpload={"Parts": parts}, ChecksumCRC32=composite)
    assert (done["ChecksumCRC32"], done["ChecksumType"]) == (composite, "COMPOSITE")
    head = c.head_object(Bucket="multi", Key="composite", ChecksumMode="ENABLED")
    assert (head["ChecksumCRC32"], head["ChecksumType"]) == (composite, "COMPOSITE")
    part = c.get_object(Bucket="multi", Key="composite", PartNumber=2, ChecksumMode="ENABLED")
    assert (part["ChecksumCRC32"], part["Body"].read()) == (_b64(crc32s[1]), bodies[1])  # checked by boto3 too
    assert c.get_object(Bucket="multi", Key="composite")["Body"].read() == b"".join(bodies)
    attributes = c.get_object_attributes(Bucket="multi", Key="composite", ObjectAttributes=["Checksum", "ObjectParts"])
    assert attributes["Checksum"] == {"ChecksumCRC32": composite, "ChecksumType": "COMPOSITE"}
    assert [p["ChecksumCRC32"] for p in attributes["ObjectParts"]["Parts"]] == [_b64(crc) for crc in crc32s]

    # FULL_OBJECT: CRC-64/NVME of all the bytes, which boto3 checks as it reads the object back
    created = c.create_multipart_upload(Bucket="multi", Key="full", ChecksumAlgorithm="CRC64NVME")
    assert created["ChecksumType"] == "FULL_OBJECT"
    upload = created["UploadId"]
    parts = [{"PartNumber": n, "ETag": sent["ETag"], "ChecksumCRC64NVME": sent["ChecksumCRC64NVME"]}
             for n, sent in ((n, c.upload_part(Bucket="multi", Key="full", UploadId=upload, PartNumber=n, Body=body,
                                               ChecksumAlgorithm="CRC64NVME")) for n, body in enumerate(bodies, 1))]
    whole = _b64(crt_checksums.crc64nvme(b"".join(bodies)).to_bytes(8, "big"))
    done = c.complete_multipart_upload(Bucket="multi", Key="full", UploadId=upload, MultipartUpload={"Parts": parts},
                                       ChecksumCRC64NVME=whole)
    assert (done["ChecksumCRC64NVME"], done["ChecksumType"]) == (whole, "FULL_OBJECT")
    got = c.get_object(Bucket="multi", Key="full")
    assert (got["ChecksumCRC64NVME"], got["Body"].read()) == (whole, b"".join(bodies))
    # a copy of it is one body: the checksum of all its bytes still holds; a composite one would not
    c.copy_object(Bucket="multi", Key="full-copy", CopySource={"Bucket": "multi", "Key": "full"})
    c.copy_object(Bucket="multi", Key="composite-copy", CopySource={"Bucket": "multi", "Key": "composite"})
    assert c.head_object(Bucket="multi", Key="full-copy", ChecksumMode="ENABLED")["ChecksumCRC64NVME"] == whole
    assert "ChecksumCRC32" not in c.head_object(Bucket="multi", Key="composite-copy", ChecksumMode="ENABLED")
    with pytest.raises(ClientError) as e:
        c.create_multipart_upload(Bucket="multi", Key="no", ChecksumAlgorithm="SHA256", ChecksumType="FULL_OBJECT")
    assert code(e.value) == "InvalidRequest"


def test_upload_part_copy_gives_the_part_the_checksum_its_upload_asks_for(s3):
    c = s3.client()
    source = os.urandom(6 * MiB)
    c.put_object(Bucket="multi", Key="copy-source", Body=source)
    upload = c.create_multipart_upload(Bucket="multi", Key="copied", ChecksumAlgorithm="SHA256")["UploadId"]
    copied = c.upload_part_copy(Bucket="multi", Key="copied", UploadId=upload, PartNumber=1,
                                CopySource={"Bucket": "multi", "Key": "copy-source"})["CopyPartResult"]
    assert copied["ChecksumSHA256"] == _b64(hashlib.sha256(source).digest())
    done = c.complete_multipart_upload(Bucket="multi", Key="copied", UploadId=upload, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": copied["ETag"], "ChecksumSHA256": copied["ChecksumSHA256"]}]})
    assert done["ChecksumSHA256"] == _b64(hashlib.sha256(hashlib.sha256(source).digest()).digest()) + "-1"
    assert c.get_object(Bucket="multi", Key="copied")["Body"].read() == source


def test_uploads_listed_with_a_delimiter_roll_up_into_common_prefixes(s3):
    """ListMultipartUploads with a delimiter: the keys that share what comes
    up to it after the prefix are one CommonPrefix, each counting toward
    max-uploads, and pages go on from a CommonPrefix as from a key."""
    c = s3.client()
    c.create_bucket(Bucket="rollup")
    keys = ["a/1", "a/2", "b", "c/d/e", "c/x"]
    ids = {key: c.create_multipart_upload(Bucket="rollup", Key=key)["UploadId"] for key in keys}
    try:
        def listed(**args):
            page = c.list_multipart_uploads(Bucket="rollup", Delimiter="/", **args)
            return ([u["Key"] for u in page.get("Uploads", [])],
                    [p["Prefix"] for p in page.get("CommonPrefixes", [])], page["IsTruncated"], page)

        assert listed()[:3] == (["b"], ["a/", "c/"], False)
        assert listed(Prefix="c/")[:3] == (["c/x"], ["c/d/"], False)
        seen, marker, upload_marker = [], "", ""
        for _ in range(5):  # one at a time
            uploads, prefixes, more, page = listed(MaxUploads=1, KeyMarker=marker, UploadIdMarker=upload_marker)
            seen += uploads + prefixes
            if not more:
                break
            marker, upload_marker = page["NextKeyMarker"], page.get("NextUploadIdMarker", "")
        assert seen == ["a/", "b", "c/"]
        flat = c.list_multipart_uploads(Bucket="rollup")["Uploads"]  # no delimiter: every upload
        assert [(u["Key"], u["UploadId"]) for u in flat] == [(key, ids[key]) for key in keys]
    finally:
        for key, upload in ids.items():
            c.abort_multipart_upload(Bucket="rollup", Key=key, UploadId=upload)


def test_two_completes_of_one_upload_at_once_make_one_object(s3):
    """Two clients complete the same upload at the same moment (a retry
    racing the first try): both get the object's ETag, the object is whole,
    and one manifest is kept."""
    import threading

    c = s3.client()
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    upload, done = upload_parts(c, "raced.bin", parts)
    answers: list = []

    def complete() -> None:
        try:
            answers.append(s3.client().complete_multipart_upload(
                Bucket="multi", Key="raced.bin", UploadId=upload, MultipartUpload={"Parts": done})["ETag"])
        except ClientError as e:
            answers.append(code(e))

    racers = [threading.Thread(target=complete) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
    assert answers == [md5_etag(parts)] * 2
    assert c.get_object(Bucket="multi", Key="raced.bin")["Body"].read() == b"".join(parts)
    with Wire(s3.cluster.port) as w:
        assert w.stat("multi/raced.bin")["have"] == "2"
    def manifests() -> int:  # copies on disk of this object's manifests
        return sum(1 for sid in s3.cluster.server_folders() for path in s3.cluster.blob_files(sid)
                   if path.open("rb").read(200).startswith(b"deposito-manifest 1\n")
                   and b'"multi/raced.bin"' in path.open("rb").read(200))

    assert poll(lambda: manifests() == 2, 20)  # one manifest kept, two copies; a losing one's are garbage
    c.delete_object(Bucket="multi", Key="raced.bin")


def test_upload_part_copy_takes_ranges_of_an_object(s3):
    c = s3.client()
    source = os.urandom(6 * MiB)
    c.put_object(Bucket="multi", Key="source.bin", Body=source)
    upload = c.create_multipart_upload(Bucket="multi", Key="copied.bin")["UploadId"]
    first = c.upload_part_copy(Bucket="multi", Key="copied.bin", UploadId=upload, PartNumber=1,
                               CopySource={"Bucket": "multi", "Key": "source.bin"})["CopyPartResult"]["ETag"]
    second = c.upload_part_copy(Bucket="multi", Key="copied.bin", UploadId=upload, PartNumber=2,
                                CopySource={"Bucket": "multi", "Key": "source.bin"},
                                CopySourceRange="bytes=100-199")["CopyPartResult"]["ETag"]
    with pytest.raises(ClientError) as e:
        c.upload_part_copy(Bucket="multi", Key="copied.bin", UploadId=upload, PartNumber=3,
                           CopySource={"Bucket": "multi", "Key": "source.bin"}, CopySourceRange=f"bytes=0-{6 * MiB}")
    assert code(e.value) == "InvalidRange"
    c.complete_multipart_upload(Bucket="multi", Key="copied.bin", UploadId=upload, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}]})
    assert c.get_object(Bucket="multi", Key="copied.bin")["Body"].read() == source + source[100:200]
    c.delete_objects(Bucket="multi", Delete={"Objects": [{"Key": "copied.bin"}, {"Key": "source.bin"}]})


def test_abort_and_expiry_leave_nothing_on_the_servers(s3):
    c = s3.client()
    before = blobs_on_disk(s3.cluster)
    aborted = c.create_multipart_upload(Bucket="multi", Key="aborted.bin")["UploadId"]
    c.upload_part(Bucket="multi", Key="aborted.bin", UploadId=aborted, PartNumber=1, Body=os.urandom(MiB))
    abandoned = c.create_multipart_upload(Bucket="multi", Key="abandoned.bin")["UploadId"]
    c.upload_part(Bucket="multi", Key="abandoned.bin", UploadId=abandoned, PartNumber=1, Body=os.urandom(MiB))
    assert len(blobs_on_disk(s3.cluster) - before) == 4  # two parts, two copies each
    c.abort_multipart_upload(Bucket="multi", Key="aborted.bin", UploadId=aborted)
    with pytest.raises(ClientError) as e:
        c.abort_multipart_upload(Bucket="multi", Key="aborted.bin", UploadId=aborted)
    assert code(e.value) == "NoSuchUpload"
    # the proxy was started with --upload-expiry 2: the one left alone is aborted within its next check
    assert poll(lambda: blobs_on_disk(s3.cluster) <= before, 30), blobs_on_disk(s3.cluster) - before
    with pytest.raises(ClientError) as e:
        c.upload_part(Bucket="multi", Key="abandoned.bin", UploadId=abandoned, PartNumber=2, Body=b"late")
    assert code(e.value) == "NoSuchUpload"


def upload_parts(c, key: str, parts: list[bytes], **create) -> tuple[str, list[dict]]:
    upload = c.create_multipart_upload(Bucket="multi", Key=key, **create)["UploadId"]
    done = [{"PartNumber": n, "ETag": c.upload_part(Bucket="multi", Key=key, UploadId=upload, PartNumber=n,
                                                    Body=part)["ETag"]} for n, part in enumerate(parts, 1)]
    return upload, done


@pytest.mark.slow
def test_a_ranged_get_of_a_multipart_object_goes_on_when_its_server_is_killed(s3):
    """Failover holds inside every part: the copy that dies mid-range is
    taken over at the same byte, and the later parts come from live copies."""
    from tests.cluster import sha

    c = s3.client()
    parts = [os.urandom(6 * MiB) for _ in range(6)]
    data = b"".join(parts)
    upload, done = upload_parts(c, "three.bin", parts, Metadata={"replicas": "3"})
    c.complete_multipart_upload(Bucket="multi", Key="three.bin", UploadId=upload, MultipartUpload={"Parts": done})
    first, last = 3 * MiB, len(data) - 3 * MiB - 1  # from inside the first part to inside the last
    url = c.generate_presigned_url("get_object", Params={"Bucket": "multi", "Key": "three.bin"}, ExpiresIn=60)
    head, body, _ = get_killing_the_senders(s3, url, f"Range: bytes={first}-{last}\r\n", 4 * MiB)  # in part 2
    assert head.startswith(b"HTTP/1.1 206")
    assert len(body) == last - first + 1 and sha(body) == sha(data[first:last + 1])
    c.delete_object(Bucket="multi", Key="three.bin")


@pytest.mark.slow
def test_a_server_killed_during_upload_part_still_gives_a_whole_object(s3):
    """A storage server dies while a part's bytes flow to it: the part's
    200 still means two verified copies (made elsewhere), and the object
    completes whole."""
    import threading

    from tests.cluster import incoming_bytes

    c = s3.client()
    upload = c.create_multipart_upload(Bucket="multi", Key="survivor.bin")["UploadId"]
    first = os.urandom(5 * MiB)
    e1 = c.upload_part(Bucket="multi", Key="survivor.bin", UploadId=upload, PartNumber=1, Body=first)["ETag"]
    second = os.urandom(48 * MiB)
    answer: dict = {}
    sending = threading.Thread(target=lambda: answer.update(c.upload_part(
        Bucket="multi", Key="survivor.bin", UploadId=upload, PartNumber=2, Body=second)))
    before = {sid: incoming_bytes(s3.cluster, sid) for sid in s3.cluster.servers}
    sending.start()
    receiving = poll(lambda: [sid for sid in s3.cluster.servers if incoming_bytes(s3.cluster, sid) > before[sid]], 10)
    assert receiving
    victim = receiving[0]
    s3.cluster.kill(victim)
    try:
        sending.join(60)
        assert answer["ETag"] == '"%s"' % hashlib.md5(second).hexdigest()
        c.complete_multipart_upload(Bucket="multi", Key="survivor.bin", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": answer["ETag"]}]})
        assert c.get_object(Bucket="multi", Key="survivor.bin")["Body"].read() == first + second
        assert len([sid for sid in s3.cluster.holders(second) if sid != victim]) == 2  # two copies on live disks
    finally:
        s3.cluster.start_server(victim)
        s3.cluster.wait_up(3)
    c.delete_object(Bucket="multi", Key="survivor.bin")


@pytest.mark.slow
def test_a_proxy_killed_between_upload_part_and_complete(tmp_path):
    """kill -9 of the proxy after the parts are in: after the restart the
    upload is still there, its parts listed, and it completes whole; another,
    aborted after the restart, leaves nothing on any disk. (A cluster of its
    own: the module's aborts uploads silent for 2 s, less than a restart
    may take on a busy machine.)"""
    with s3_cluster(tmp_path) as s3:
        c = s3.client()
        before = blobs_on_disk(s3.cluster)
        parts = [os.urandom(5 * MiB), os.urandom(1000)]
        kept, done = upload_parts(c, "kept.bin", parts)
        dropped, _ = upload_parts(c, "dropped.bin", [os.urandom(MiB)])
        s3.cluster.kill_proxy()
        s3.cluster.start_proxy()
        s3.cluster.wait_up(3)
        assert poll(lambda: _open(s3.port), 10)
        c = s3.client()
        listed = c.list_parts(Bucket="multi", Key="kept.bin", UploadId=kept)["Parts"]
        assert [(p["PartNumber"], p["ETag"]) for p in listed] == [(d["PartNumber"], d["ETag"]) for d in done]
        c.complete_multipart_upload(Bucket="multi", Key="kept.bin", UploadId=kept, MultipartUpload={"Parts": done})
        assert c.get_object(Bucket="multi", Key="kept.bin")["Body"].read() == b"".join(parts)
        c.abort_multipart_upload(Bucket="multi", Key="dropped.bin", UploadId=dropped)
        c.delete_object(Bucket="multi", Key="kept.bin")
        assert poll(lambda: blobs_on_disk(s3.cluster) <= before, 20), blobs_on_disk(s3.cluster) - before


@pytest.mark.slow
def test_a_lost_catalog_is_rebuilt_with_its_multipart_objects(tmp_path):
    """The catalog is deleted: the rebuild makes each completed multipart
    object again from its manifest and parts (GET byte-exact, same ETag),
    the parts of an upload that was under way, or not chosen, are garbage,
    an object of one PutObject keeps its ETag, type and metadata, kept
    on each of its copies (the reconciler's too), and the bucket is there again."""
    import shutil

    http = free_port()
    with s3_cluster(tmp_path, proxy_args=("--http", f"tcp:{http}:interface=127.0.0.1")) as s3:
        cluster, port, c = s3.cluster, s3.port, s3.client()
        parts = [os.urandom(5 * MiB), os.urandom(3 * MiB)]
        upload, done = upload_parts(c, "whole.bin", parts, ContentType="video/mp4")
        c.upload_part(Bucket="multi", Key="whole.bin", UploadId=upload, PartNumber=3, Body=b"not chosen")
        c.complete_multipart_upload(Bucket="multi", Key="whole.bin", UploadId=upload, MultipartUpload={"Parts": done})
        etag = c.head_object(Bucket="multi", Key="whole.bin")["ETag"]
        upload_parts(c, "open.bin", [b"under way"])  # never completed
        plain = os.urandom(100_000)
        put = c.put_object(Bucket="multi", Key="plain.txt", Body=plain, ContentType="text/plain",
                           Metadata={"replicas": "1", "owner": "me"})
        with cluster.wire() as w:  # its other copies are made by the reconciler, metadata and all
            assert w.cmd("REPLICAS multi/plain.txt 2 WAIT").startswith("OK")
        from deposito.blobstore import meta_at
        copies = [p for sid in cluster.server_folders() for p in cluster.blob_files(sid) if p.read_bytes() == plain]
        assert len(copies) == 2 and all('"owner":"me"' in meta_at(str(p)).meta for p in copies)
        assert poll(lambda: not cluster.holders(b"not chosen"), 20)  # the unchosen part is deleted at Complete
        held = blobs_on_disk(cluster)
        assert len(held) == 2 * 5  # two parts, a manifest, the open upload's part, the plain object: two copies each
        cluster.kill_proxy()
        shutil.rmtree(cluster.root / "proxy")  # the catalog is gone
        cluster.start_proxy("--rebuild")
        # S3 and HTTP turn clients away while the rebuild lasts (its grace alone is 5 s), as the text protocol does
        assert poll(lambda: _open(port), 10)
        assert code_of(lambda: S3(cluster, port).client().head_bucket(Bucket="multi")) == "503"
        for path in ("/files/multi%2Fwhole.bin", "/api/files"):
            status, _, body = fetch(http, path)
            assert status == 503 and b"rebuilding" in body, (path, status, body)
        cluster.wait_up(3)

        def rebuilt():
            with cluster.wire() as w:
                return not w.cmd("STAT multi/whole.bin").startswith("ERR unavailable")
        assert poll(rebuilt, 30)
        with cluster.wire() as w:
            reply, body = w.get("multi/whole.bin")
            assert body == b"".join(parts) and f"sha256={hashlib.sha256(body).hexdigest()}" in reply
        assert poll(lambda: _open(port), 10)
        c = S3(cluster, port).client()
        c.head_bucket(Bucket="multi")  # made again by the rebuild: its objects were stored through S3
        assert sorted(o["Key"] for o in c.list_objects_v2(Bucket="multi")["Contents"]) == ["plain.txt", "whole.bin"]
        head = c.head_object(Bucket="multi", Key="whole.bin")
        assert (head["ETag"], head["ContentType"]) == (etag, "video/mp4")
        assert poll(lambda: len(blobs_on_disk(cluster)) == 2 * 4, 20)  # the open upload's part is garbage
        again = c.get_object(Bucket="multi", Key="plain.txt")  # a single PUT's metadata came back from its blobs
        assert again["Body"].read() == plain and again["ETag"] == put["ETag"]
        assert (again["ContentType"], again["Metadata"]) == ("text/plain", {"replicas": "1", "owner": "me"})
        assert not cluster.holders(b"under way")


@pytest.mark.slow
def test_replicas_wait_and_scrub_reach_every_part_of_a_multipart_object(tmp_path):
    """REPLICAS ... WAIT on a multipart object answers once each of its
    parts has its copies, counted on the disks; a part's copy that rots on
    a disk is found by the scrub and made again."""
    with s3_cluster(tmp_path, server_args=("--scrub-every", "2")) as s3:
        cluster, c = s3.cluster, s3.client()
        parts = [os.urandom(5 * MiB), os.urandom(2 * MiB)]
        upload, done = upload_parts(c, "grow.bin", parts, Metadata={"replicas": "1"})
        c.complete_multipart_upload(Bucket="multi", Key="grow.bin", UploadId=upload, MultipartUpload={"Parts": done})
        assert [len(cluster.holders(part)) for part in parts] == [1, 1]
        with cluster.wire() as w:
            reply = w.cmd("REPLICAS multi/grow.bin 3 WAIT")
            assert reply.startswith("OK") and "have=3" in reply, reply
            assert w.stat("multi/grow.bin")["have"] == "3"
        assert [len(cluster.holders(part)) for part in parts] == [3, 3]
        rotten = cluster.holders(parts[1])[0]
        [path] = [p for p in cluster.blob_files(rotten) if p.stat().st_size == len(parts[1])]
        with open(path, "r+b") as f:
            f.seek(1000)
            f.write(b"\x00rotten\x00")
        assert len(cluster.holders(parts[1])) == 2
        assert poll(lambda: len(cluster.holders(parts[1])) == 3, 30)  # found by a scrub, copied again
        assert c.get_object(Bucket="multi", Key="grow.bin")["Body"].read() == b"".join(parts)


@pytest.mark.slow
def test_a_complete_longer_than_the_clients_read_timeout_keeps_it_waiting(tmp_path):
    """A Complete reads its parts once. Here the server a part is read from
    first is frozen, so that read waits until the server is taken for down
    and goes on from the other copy: longer than the client's 2 s read
    timeout. As S3 does, the 200 begins and spaces follow until the
    answer, so the client, which does not retry, gets its object."""
    import signal
    import time

    from deposito.placement import read_order
    from deposito.roster import Member

    with s3_cluster(tmp_path) as s3:
        cluster, c = s3.cluster, s3.client()
        parts = [os.urandom(5 * MiB), os.urandom(MiB)]
        upload, done = upload_parts(c, "slow.bin", parts)
        holders = cluster.holders(parts[0])
        [blob] = {p.name for p in cluster.blob_files(holders[0]) if p.read_bytes() == parts[0]}
        frozen = read_order(blob, [Member(id=h, zone="", host="", port=0) for h in holders])[0].id
        impatient = s3.client(read_timeout=2)
        cluster.servers[frozen].send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            result = impatient.complete_multipart_upload(Bucket="multi", Key="slow.bin", UploadId=upload,
                                                         MultipartUpload={"Parts": done})
            took = time.monotonic() - started
        finally:
            cluster.servers[frozen].send_signal(signal.SIGCONT)
        assert took > 3, took  # it did outlast the client's read timeout
        assert result["ETag"] == md5_etag(parts)
        assert c.get_object(Bucket="multi", Key="slow.bin")["Body"].read() == b"".join(parts)


@pytest.mark.slow
def test_a_complete_that_fails_after_its_200_began_says_so_and_keeps_the_upload(tmp_path):
    """Both copies of a part are frozen: the Complete, its 200 begun, fails
    once both servers are taken for down. The client reads the Error in
    that 200 as the error it is, nothing was made, and the upload can be
    completed once the servers are back."""
    import signal

    with s3_cluster(tmp_path) as s3:
        cluster, c = s3.cluster, s3.client()
        parts = [os.urandom(5 * MiB), os.urandom(MiB)]
        upload, done = upload_parts(c, "stuck.bin", parts)
        holders = cluster.holders(parts[0])
        assert len(holders) == 2
        for sid in holders:
            cluster.servers[sid].send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(ClientError) as failed:
                s3.client(read_timeout=2).complete_multipart_upload(
                    Bucket="multi", Key="stuck.bin", UploadId=upload, MultipartUpload={"Parts": done})
        finally:
            for sid in holders:
                cluster.servers[sid].send_signal(signal.SIGCONT)
        assert code(failed.value) == "ServiceUnavailable", failed.value.response
        assert code_of(lambda: c.head_object(Bucket="multi", Key="stuck.bin")) == "404"
        cluster.wait_up(3)
        c.complete_multipart_upload(Bucket="multi", Key="stuck.bin", UploadId=upload, MultipartUpload={"Parts": done})
        assert c.get_object(Bucket="multi", Key="stuck.bin")["Body"].read() == b"".join(parts)


def code_of(call) -> str:
    try:
        call()
    except ClientError as e:
        return code(e)
    return "none"


@pytest.mark.parametrize("header", ["bytes=\u00b2-3", "bytes=0-\u0663", "bytes=0-" + "9" * 5000, "bytes=3-1", "items=0-1"])
def test_a_copy_source_range_that_is_not_two_ascii_numbers_in_order_is_refused(header):
    from deposito.s3.errors import S3Error
    from deposito.s3.multipart import _copy_range

    assert _copy_range("bytes=2-5", 10) == (2, 4)
    with pytest.raises(S3Error) as refused:
        _copy_range(header, 10)
    assert refused.value.code in ("InvalidArgument", "InvalidRange"), refused.value


def test_list_multipart_uploads_pages_past_an_upload_whose_key_is_the_prefix(s3):
    """A page that ends on an upload of a key ending in the delimiter goes
    on among that key's uploads (before: its marker was taken for a
    CommonPrefix given back, and the rest were skipped)."""
    c = s3.client()
    c.create_bucket(Bucket="mub")
    ids = sorted(c.create_multipart_upload(Bucket="mub", Key="a/")["UploadId"] for _ in range(2))
    other = c.create_multipart_upload(Bucket="mub", Key="a/x")["UploadId"]
    want = [("a/", ids[0]), ("a/", ids[1]), ("a/x", other)]
    whole = c.list_multipart_uploads(Bucket="mub", Prefix="a/", Delimiter="/")
    assert [(u["Key"], u["UploadId"]) for u in whole["Uploads"]] == want
    got, key_marker, id_marker = [], None, None
    for _ in range(10):
        args = dict(Bucket="mub", Prefix="a/", Delimiter="/", MaxUploads=1)
        if key_marker is not None:
            args["KeyMarker"] = key_marker
            if id_marker:
                args["UploadIdMarker"] = id_marker
        r = c.list_multipart_uploads(**args)
        got += [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]
        if not r["IsTruncated"]:
            break
        key_marker, id_marker = r.get("NextKeyMarker"), r.get("NextUploadIdMarker")
    assert got == want


def test_list_multipart_uploads_after_a_key_marker_alone_leaves_that_keys_uploads_out(s3):
    """As S3: without upload-id-marker, only keys after key-marker (before:
    that key's own uploads came again)."""
    c = s3.client()
    c.create_bucket(Bucket="mkb")
    c.create_multipart_upload(Bucket="mkb", Key="k")
    later = c.create_multipart_upload(Bucket="mkb", Key="l")["UploadId"]
    r = c.list_multipart_uploads(Bucket="mkb", KeyMarker="k")
    assert [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])] == [("l", later)]
