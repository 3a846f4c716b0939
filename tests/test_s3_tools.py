"""Real S3 tools against the S3 API of one real cluster: the aws CLI (v1,
from the test extras) and rclone (the distribution's package, which .ci/run
installs; its tests are skipped where it is missing).

Most files here are a few MiB, below the sizes where the tools switch to
multipart uploads (8 MiB for the aws CLI, 200 MiB for rclone); the
multipart tests cross them (rclone's with a lower --s3-upload-cutoff).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deposito.s3.keys import new_key_pair
from deposito.wire import list_line, parse_entry
from tests.cluster import Cluster, free_port, poll

pytestmark = pytest.mark.slow

REGION = "us-east-1"
RCLONE = shutil.which("rclone")
needs_rclone = pytest.mark.skipif(
    RCLONE is None, reason="rclone is not installed on this machine: .ci/run installs the distribution's"
                           " rclone package with apt-get, which could not be done here")
DAY = 86400


class S3Tools:
    """The S3 endpoint of the module's cluster, and the tools pointed at it
    with a private configuration: nothing from the user's ~/.aws or rclone
    config is read."""

    def __init__(self, cluster: Cluster, port: int, key_id: str, secret: str, home: Path) -> None:
        self.cluster = cluster
        self.endpoint = f"http://127.0.0.1:{port}"
        self.key_id = key_id
        self.secret = secret
        self.home = home

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8", "TMPDIR": str(self.home)}

    def aws(self, *args: str, key_id: str | None = None, secret: str | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """``aws --endpoint-url ... ARGS``, configured by the environment alone."""
        env = self._env() | {
            "AWS_ACCESS_KEY_ID": key_id or self.key_id,
            "AWS_SECRET_ACCESS_KEY": secret or self.secret,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(self.home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.home / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_MAX_ATTEMPTS": "1",  # a failure shows at once, not after retries that might hide it
            "PYTHONIOENCODING": "utf-8",
        }
        return subprocess.run([sys.executable, "-m", "awscli", "--endpoint-url", self.endpoint, *args],
                              env=env, cwd=cwd or self.home, capture_output=True, timeout=120)

    def aws_ok(self, *args: str, cwd: Path | None = None) -> str:
        """The standard output of an aws command that must succeed."""
        done = self.aws(*args, cwd=cwd)
        assert done.returncode == 0, f"aws {' '.join(args)}: {done.returncode}\n{done.stderr.decode(errors='replace')}"
        return done.stdout.decode()

    def aws_json(self, *args: str) -> dict:
        return json.loads(self.aws_ok(*args, "--output", "json"))

    def bucket(self, name: str) -> None:
        """Make a bucket with boto3, in this process: quicker than the aws
        CLI, whose ``s3 mb`` is tested once."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.key_id,
                     aws_secret_access_key=self.secret).create_bucket(Bucket=name)

    def rclone(self, *args: str) -> subprocess.CompletedProcess:
        """``rclone ARGS`` with the remote ``depo:`` defined by environment
        variables alone, and no config file."""
        assert RCLONE is not None
        env = self._env() | {
            "RCLONE_CONFIG": os.devnull,  # no config file: the remote is the variables below
            "RCLONE_CONFIG_DEPO_TYPE": "s3",
            "RCLONE_CONFIG_DEPO_PROVIDER": "Other",
            "RCLONE_CONFIG_DEPO_ENDPOINT": self.endpoint,
            "RCLONE_CONFIG_DEPO_ACCESS_KEY_ID": self.key_id,
            "RCLONE_CONFIG_DEPO_SECRET_ACCESS_KEY": self.secret,
        }
        return subprocess.run([RCLONE, "--retries", "1", "--low-level-retries", "1", *args],
                              env=env, cwd=self.home, capture_output=True, timeout=120)

    def rclone_ok(self, *args: str) -> str:
        done = self.rclone(*args)
        assert done.returncode == 0, f"rclone {' '.join(args)}: {done.returncode}\n{done.stderr.decode(errors='replace')}"
        return done.stdout.decode()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A proxy with the S3 API and three storage servers, shared by the
    module's tests (each works in buckets of its own)."""
    root = tmp_path_factory.mktemp("s3tools")
    key_id, secret = new_key_pair()
    keys = root / "s3-keys"
    keys.write_text(f"# the tests' key\n{key_id} {secret}\n")
    keys.chmod(0o600)
    port = free_port()
    cluster = Cluster(root, proxy_args=("--s3", f"tcp:{port}:interface=127.0.0.1", "--s3-keys", str(keys)))
    cluster.start(3)
    try:
        def answers() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                return True
            except OSError:
                return False
        assert poll(answers, 20), "the S3 port does not answer:\n" + cluster.log("proxy")[-3000:]
        home = root / "home"  # not named like a server folder (s0, s1...): copies are counted in those
        home.mkdir()
        yield S3Tools(cluster, port, key_id, secret, home)
    finally:
        cluster.stop()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# Folder names and file names of the trees that are synced and copied: nested,
# with spaces, accents, CJK and the characters URL encodings trip over.
FOLDERS = ["", "docs", "docs/old notes", "photos/été 2024", "日本語", "a/b/c/d", "a+b"]
STEMS = ["report", "naïve résumé", "写真", "with space", "plus+sign", "x"]
SIZES = [0, 1, 4096, 65537, 256 << 10]


def make_tree(root: Path, count: int, seed: int) -> dict[str, bytes]:
    """``count`` files of SIZES (random bytes) in nested folders
    under ``root``, their modification times a day in the past, as files
    kept for a while are; their bytes by relative path."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(count):
        folder = FOLDERS[i % len(FOLDERS)]
        rel = f"{folder}/{STEMS[i % len(STEMS)]} {i}.bin".lstrip("/")
        files[rel] = rng.randbytes(SIZES[i % len(SIZES)])
    stamp = time.time() - DAY
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (stamp, stamp))
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by its path relative to it (``/``-separated)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def depot_names(s3: S3Tools, prefix: str) -> list[str]:
    """The names of the depot files starting with ``prefix``, through the text protocol."""
    with s3.cluster.wire() as w:
        return [parse_entry(line).name for line in w.multi(list_line(prefix))]


def ls_lines(output: str) -> tuple[list[str], dict[str, int]]:
    """``aws s3 ls``'s output: the common prefixes (``PRE name/``) and the
    objects with their sizes."""
    prefixes, objects = [], {}
    for line in output.splitlines():
        if line.strip().startswith("PRE "):
            prefixes.append(line.strip()[4:])
        elif line.strip():
            _date, _time, size, key = line.split(None, 3)
            objects[key] = int(size)
    return prefixes, objects


# The aws CLI


def test_aws_mb_and_cp_up_and_down_the_same_file_as_the_text_protocol(s3, tmp_path):
    assert s3.aws_ok("s3", "mb", "s3://tools-cp") == "make_bucket: tools-cp\n"
    data = os.urandom(3 << 20 | 12345)  # 3 MiB and some: one PutObject (multipart starts at 8 MiB)
    (tmp_path / "up.bin").write_bytes(data)
    s3.aws_ok("s3", "cp", str(tmp_path / "up.bin"), "s3://tools-cp/dir/blob.bin")
    s3.aws_ok("s3", "cp", "s3://tools-cp/dir/blob.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == data
    streamed = s3.aws("s3", "cp", "s3://tools-cp/dir/blob.bin", "-")
    assert streamed.returncode == 0 and streamed.stdout == data
    with s3.cluster.wire() as w:  # the object is the depot file bucket/key
        assert w.get("tools-cp/dir/blob.bin")[1] == data
        assert w.stat("tools-cp/dir/blob.bin")["replicas"] == "2"  # the proxy's default
    assert len(s3.cluster.holders(data)) == 2


def test_aws_cp_metadata_replicas_3_makes_three_copies_on_the_disks(s3, tmp_path):
    s3.bucket("tools-replicas")
    three, default = os.urandom(1 << 20), os.urandom(1 << 20)
    (tmp_path / "three.bin").write_bytes(three)
    (tmp_path / "default.bin").write_bytes(default)
    s3.aws_ok("s3", "cp", str(tmp_path / "three.bin"), "s3://tools-replicas/three.bin", "--metadata", "replicas=3")
    s3.aws_ok("s3", "cp", str(tmp_path / "default.bin"), "s3://tools-replicas/default.bin")
    # a 200 to the PUT means every copy is durable: no waiting for them
    assert sorted(s3.cluster.holders(three)) == ["s0", "s1", "s2"]
    assert len(s3.cluster.holders(default)) == 2
    with s3.cluster.wire() as w:
        st = w.stat("tools-replicas/three.bin")
        assert st["replicas"] == "3" and st["have"] == "3"
    head = s3.aws_json("s3api", "head-object", "--bucket", "tools-replicas", "--key", "three.bin")
    assert head["Metadata"] == {"replicas": "3"}


def test_aws_cp_of_a_file_past_8_mib_goes_multipart_and_comes_back_whole(s3, tmp_path):
    s3.bucket("tools-multipart")
    data = os.urandom(21 << 20 | 777)  # three parts of 8 MiB (the last shorter)
    (tmp_path / "big.bin").write_bytes(data)
    s3.aws_ok("s3", "cp", str(tmp_path / "big.bin"), "s3://tools-multipart/big.bin", "--metadata", "replicas=3")
    head = s3.aws_json("s3api", "head-object", "--bucket", "tools-multipart", "--key", "big.bin")
    assert head["ETag"].endswith('-3"') and head["ContentLength"] == len(data) and head["Metadata"] == {"replicas": "3"}
    s3.aws_ok("s3", "cp", "s3://tools-multipart/big.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == data
    with s3.cluster.wire() as w:  # the same file through the text protocol, with its whole-file SHA-256
        st = w.stat("tools-multipart/big.bin")
        assert (st["sha256"], st["replicas"], st["have"]) == (hashlib.sha256(data).hexdigest(), "3", "3")
    uploads = s3.aws_json("s3api", "list-multipart-uploads", "--bucket", "tools-multipart")
    assert not uploads.get("Uploads")


def test_aws_sync_a_tree_up_and_back(s3, tmp_path):
    src, back = tmp_path / "src", tmp_path / "back"
    files = make_tree(src, 36, seed=1)
    s3.bucket("tools-sync")
    s3.aws_ok("s3", "sync", str(src), "s3://tools-sync/tree")
    assert sorted(depot_names(s3, "tools-sync/tree/")) == sorted(f"tools-sync/tree/{rel}" for rel in files)
    s3.aws_ok("s3", "sync", "s3://tools-sync/tree", str(back))
    got = read_tree(back)
    assert sorted(got) == sorted(files)
    for rel, data in files.items():
        assert got[rel] == data, rel
    # Sizes and times agree both ways: syncing again copies nothing.
    assert s3.aws_ok("s3", "sync", str(src), "s3://tools-sync/tree") == ""
    assert s3.aws_ok("s3", "sync", "s3://tools-sync/tree", str(back)) == ""
    # A changed file, and only it, goes up again.
    changed = next(rel for rel, data in files.items() if len(data) == 4096)
    (src / changed).write_bytes(b"changed " * 100)
    out = s3.aws_ok("s3", "sync", str(src), "s3://tools-sync/tree")
    assert out.count("upload:") == 1 and changed in out, out
    with s3.cluster.wire() as w:
        assert w.get(f"tools-sync/tree/{changed}")[1] == b"changed " * 100


def test_aws_ls_shows_common_prefixes_as_pre_and_pages_recursively(s3, tmp_path):
    s3.bucket("tools-ls")
    objects = {"a.txt": b"a" * 12, "docs/x.txt": b"x" * 3, "docs/sub/y.txt": b"y" * 5,
               "docs/sub/z.txt": b"", "pics/été.jpg": b"p" * 7, "pics/2024/jan.jpg": b"j" * 9, "zz": b"z"}
    for key, data in objects.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(data)
    s3.aws_ok("s3", "cp", "--recursive", str(tmp_path), "s3://tools-ls/")
    prefixes, top = ls_lines(s3.aws_ok("s3", "ls", "s3://tools-ls/"))
    assert prefixes == ["docs/", "pics/"] and top == {"a.txt": 12, "zz": 1}
    prefixes, docs = ls_lines(s3.aws_ok("s3", "ls", "s3://tools-ls/docs/"))
    assert prefixes == ["sub/"] and docs == {"x.txt": 3}
    prefixes, everything = ls_lines(s3.aws_ok("s3", "ls", "--recursive", "s3://tools-ls/"))
    assert prefixes == [] and everything == {key: len(data) for key, data in objects.items()}
    # Pages of two keys: the CLI follows the continuation tokens to the end.
    paged = ls_lines(s3.aws_ok("s3", "ls", "--recursive", "--page-size", "2", "s3://tools-ls/"))
    assert paged == ([], everything)
    paged = ls_lines(s3.aws_ok("s3", "ls", "--page-size", "1", "s3://tools-ls/"))
    assert paged == (["docs/", "pics/"], {"a.txt": 12, "zz": 1})  # each common prefix once


def test_aws_rm_recursive_then_rb_refused_while_not_empty(s3, tmp_path):
    s3.bucket("tools-rb")
    files = make_tree(tmp_path / "tree", 12, seed=2)
    s3.aws_ok("s3", "sync", str(tmp_path / "tree"), "s3://tools-rb")
    assert "tools-rb" in [line.split(None, 2)[2] for line in s3.aws_ok("s3", "ls").splitlines()]
    refused = s3.aws("s3", "rb", "s3://tools-rb")
    assert refused.returncode != 0 and b"BucketNotEmpty" in refused.stderr, refused.stderr
    assert len(depot_names(s3, "tools-rb/")) == len(files)  # nothing was deleted
    out = s3.aws_ok("s3", "rm", "--recursive", "s3://tools-rb")
    assert out.count("delete:") == len(files)
    assert depot_names(s3, "tools-rb/") == []
    kept = next(data for data in files.values() if len(data) == 256 << 10)  # unique bytes, counted on disk
    assert poll(lambda: s3.cluster.holders(kept) == [], 20), "the deleted objects' copies stayed on the disks"
    assert s3.aws_ok("s3", "rb", "s3://tools-rb") == "remove_bucket: tools-rb\n"
    buckets = [line.split(None, 2)[2] for line in s3.aws_ok("s3", "ls").splitlines()]
    assert "tools-rb" not in buckets, buckets
    gone = s3.aws("s3api", "head-bucket", "--bucket", "tools-rb")
    assert gone.returncode != 0 and b"404" in gone.stderr, gone.stderr


def test_aws_s3api_head_object_and_ranged_get_object(s3, tmp_path):
    s3.bucket("tools-api")
    data = os.urandom(200_000)
    (tmp_path / "page.html").write_bytes(data)
    s3.aws_ok("s3", "cp", str(tmp_path / "page.html"), "s3://tools-api/site/page.html",
              "--content-type", "text/html", "--metadata", "colour=blue,owner=ana")
    head = s3.aws_json("s3api", "head-object", "--bucket", "tools-api", "--key", "site/page.html")
    assert head["ContentLength"] == len(data)
    assert head["ETag"] == f'"{md5(data)}"'
    assert head["ContentType"] == "text/html"
    assert head["Metadata"] == {"colour": "blue", "owner": "ana"}
    for wanted, lo, hi in [("bytes=100-199", 100, 199), ("bytes=-10", len(data) - 10, len(data) - 1)]:
        out = tmp_path / "part"
        got = s3.aws_json("s3api", "get-object", "--bucket", "tools-api", "--key", "site/page.html",
                          "--range", wanted, str(out))
        assert out.read_bytes() == data[lo:hi + 1], wanted
        assert got["ContentLength"] == hi + 1 - lo and got["ContentRange"] == f"bytes {lo}-{hi}/{len(data)}", got
    beyond = s3.aws("s3api", "get-object", "--bucket", "tools-api", "--key", "site/page.html",
                    "--range", f"bytes={len(data)}-", str(tmp_path / "none"))
    assert beyond.returncode != 0 and b"InvalidRange" in beyond.stderr, beyond.stderr
    missing = s3.aws("s3api", "head-object", "--bucket", "tools-api", "--key", "site/none.html")
    assert missing.returncode != 0 and b"404" in missing.stderr, missing.stderr


def test_boto3_get_of_an_object_no_copy_can_serve_is_a_plain_503(s3):
    """The only copy rotten (a byte flipped on its server's disk): GetObject
    is answered 503 ServiceUnavailable, an error document with none of the
    object's headers (its checksums made boto3's default client fail to
    read the error: AttributeError, not a ClientError it retries)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    s3.bucket("tools-rot")
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name=REGION, aws_access_key_id=s3.key_id,
                          aws_secret_access_key=s3.secret, config=Config(retries={"max_attempts": 1}))
    data = os.urandom(10_000)
    client.put_object(Bucket="tools-rot", Key="only", Body=data, Metadata={"replicas": "1", "colour": "red"})
    [holder] = s3.cluster.holders(data)
    [blob] = [p for p in s3.cluster.blob_files(holder) if p.read_bytes() == data]
    with open(blob, "r+b") as f:
        f.seek(100)
        f.write(bytes([data[100] ^ 0xFF]))
    with pytest.raises(ClientError) as refused:
        client.get_object(Bucket="tools-rot", Key="only")
    answer = refused.value.response
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 503 and answer["Error"]["Code"] == "ServiceUnavailable"
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    assert not [h for h in headers if h.startswith(("x-amz-checksum", "x-amz-meta", "etag", "last-modified"))], headers
    assert headers["x-amz-request-id"] == answer["ResponseMetadata"]["RequestId"]


def test_aws_with_a_wrong_secret_or_an_unknown_key_is_refused_and_stores_nothing(s3, tmp_path):
    s3.bucket("tools-auth")
    (tmp_path / "f.txt").write_bytes(b"not for them")
    _, wrong = new_key_pair()
    listed = s3.aws("s3", "ls", "s3://tools-auth", secret=wrong)
    assert listed.returncode != 0 and b"SignatureDoesNotMatch" in listed.stderr, listed.stderr
    put = s3.aws("s3", "cp", str(tmp_path / "f.txt"), "s3://tools-auth/f.txt", secret=wrong)
    assert put.returncode != 0 and b"SignatureDoesNotMatch" in put.stderr, put.stderr
    stranger = s3.aws("s3", "ls", "s3://tools-auth", key_id=new_key_pair()[0])
    assert stranger.returncode != 0 and b"InvalidAccessKeyId" in stranger.stderr, stranger.stderr
    assert depot_names(s3, "tools-auth/") == []
    # and the right key still works
    s3.aws_ok("s3", "cp", str(tmp_path / "f.txt"), "s3://tools-auth/f.txt")
    assert depot_names(s3, "tools-auth/") == ["tools-auth/f.txt"]


# rclone


def rclone_check(s3: S3Tools, local: Path, remote: str) -> tuple[int, str]:
    """``rclone check``'s exit status and its report (on standard error)."""
    done = s3.rclone("check", str(local), remote)
    return done.returncode, done.stderr.decode(errors="replace")


@needs_rclone
def test_rclone_copy_up_check_by_md5_and_copy_down(s3, tmp_path):
    src, back = tmp_path / "src", tmp_path / "back"
    files = make_tree(src, 24, seed=3)
    s3.rclone_ok("mkdir", "depo:tools-rclone")
    s3.rclone_ok("copy", str(src), "depo:tools-rclone/tree")
    assert sorted(depot_names(s3, "tools-rclone/tree/")) == sorted(f"tools-rclone/tree/{rel}" for rel in files)
    status, report = rclone_check(s3, src, "depo:tools-rclone/tree")
    assert status == 0 and "0 differences found" in report, report
    assert f"{len(files)} matching files" in report and "could not be checked" not in report, report
    # rclone compares the ETags with the files' MD5s: same-size different
    # bytes (sent by the aws CLI, so the ETag is their MD5) are a difference.
    victim = next(rel for rel, data in files.items() if len(data) == 4096)
    (tmp_path / "other").write_bytes(os.urandom(4096))
    s3.aws_ok("s3", "cp", str(tmp_path / "other"), f"s3://tools-rclone/tree/{victim}")
    status, report = rclone_check(s3, src, "depo:tools-rclone/tree")
    assert status != 0 and "1 differences found" in report and victim in report, report
    s3.rclone_ok("copy", str(src), "depo:tools-rclone/tree")  # puts the file back: its MD5 differs
    status, report = rclone_check(s3, src, "depo:tools-rclone/tree")
    assert status == 0 and "0 differences found" in report, report
    s3.rclone_ok("copy", "depo:tools-rclone/tree", str(back))
    got = read_tree(back)
    assert sorted(got) == sorted(files)
    for rel, data in files.items():
        assert got[rel] == data, rel
        # the modification time rclone kept with the object (X-Amz-Meta-Mtime) comes back
        assert abs((back / rel).stat().st_mtime - (src / rel).stat().st_mtime) < 1, rel


@needs_rclone
def test_rclone_multipart_copy_and_check_by_size(s3, tmp_path):
    """rclone past its upload cutoff sends multipart uploads; it checks a
    multipart object by size (its ETag is no MD5 of the bytes) and by the
    MD5 it keeps in the object's metadata."""
    src, back = tmp_path / "src", tmp_path / "back"
    src.mkdir()
    data = os.urandom(17 << 20)
    (src / "big.bin").write_bytes(data)
    s3.rclone_ok("mkdir", "depo:tools-rclone-mp")
    s3.rclone_ok("copy", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", str(src), "depo:tools-rclone-mp")
    with s3.cluster.wire() as w:
        assert w.get("tools-rclone-mp/big.bin")[1] == data
    status, report = rclone_check(s3, src, "depo:tools-rclone-mp")
    assert status == 0 and "0 differences found" in report, report
    s3.rclone_ok("copy", "depo:tools-rclone-mp", str(back))
    assert (back / "big.bin").read_bytes() == data


@needs_rclone
def test_rclone_lsf_and_delete(s3, tmp_path):
    files = make_tree(tmp_path / "src", 20, seed=4)
    s3.rclone_ok("copy", str(tmp_path / "src"), "depo:tools-lsf")
    top = s3.rclone_ok("lsf", "depo:tools-lsf").splitlines()
    assert sorted(top) == sorted({rel.split("/")[0] + ("/" if "/" in rel else "") for rel in files})
    everything = s3.rclone_ok("lsf", "-R", "--files-only", "depo:tools-lsf").splitlines()
    assert sorted(everything) == sorted(files)
    # Listing pages of 5 keys (ListObjects v1 and its markers) gives the same.
    paged = s3.rclone_ok("lsf", "-R", "--files-only", "--s3-list-chunk", "5", "depo:tools-lsf").splitlines()
    assert sorted(paged) == sorted(files)
    s3.rclone_ok("delete", "depo:tools-lsf/docs")
    kept = sorted(rel for rel in files if not rel.startswith("docs/"))
    assert sorted(s3.rclone_ok("lsf", "-R", "--files-only", "depo:tools-lsf").splitlines()) == kept
    assert sorted(depot_names(s3, "tools-lsf/")) == [f"tools-lsf/{rel}" for rel in kept]
