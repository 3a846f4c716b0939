"""The S3 API against a real cluster (twistd processes), driven by boto3:
buckets, objects, listings, conditions and ranges, signatures, and hostile
input. One cluster serves the whole module."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.client import Config
from botocore.exceptions import ClientError

from tests.cluster import Cluster, Wire, free_port, poll

ACCESS, SECRET = "AKIADEPOSITOTEST0001", "s3cr3t/forTheTests+0123456789abcdefghijkl"


class S3:
    def __init__(self, cluster: Cluster, port: int) -> None:
        self.cluster, self.port = cluster, port
        self.url = f"http://127.0.0.1:{port}"

    def client(self, secret: str = SECRET, access: str = ACCESS, **config):
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=access, aws_secret_access_key=secret,
                            region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3")
    keys = root / "s3-keys"
    keys.write_text(f"# the test's key\n{ACCESS} {SECRET}\n")
    port = free_port()
    cluster = Cluster(root, proxy_args=("--s3", f"tcp:{port}:interface=127.0.0.1", "--s3-keys", str(keys)))
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
