#!/usr/bin/env python3
"""Deposito at scale: what the proxy costs as its catalog grows to a million files.

Run by hand, never as a timed test:

    .venv/bin/python bench/scale.py                      # 10,000, 100,000, 1,000,000 files
    .venv/bin/python bench/scale.py --steps 2000,10000   # a few minutes
    .venv/bin/python bench/scale.py --postgres           # the catalog in PostgreSQL: SCALE-postgres.md

It starts a proxy (with --http) and 3 storage servers on 127.0.0.1, fills
them through the text protocol with small files (1 copy, many clients) up to
each step of --steps, and at each step measures: the PUT rate while filling,
the proxy's idle CPU, the latency of STATUS, STAT, /metrics, /api/status and
a 1000-name LIST page, a whole LIST (rate and the proxy's peak RSS growth),
the proxy's RSS, a proxy restart to serving, and a storage server's restart
until its inventory is reconciled. After the last step (or at each with
--kill) a fourth server takes a share of files with 2 copies and is killed
with SIGKILL: the time until it is declared dead, until all its files are
queued, and until all are copied again.

Writes bench/SCALE.md, bench/scale.png and the raw figures as JSON
(bench/work/scale-<time>.json, written again after each step; ``--render
JSON`` redraws the report from one).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import (CHECKOUT, HERE, KiB, MiB, DepositoClient, DepositoCluster, LogFollower, Processes,
                     ProtoError, cpu_seconds, disk_of, fmt, free_port, http_get, loadavg, machine, peak_rss,
                     reply_fields, pyplot, reset_peak, rss)

sys.path.insert(0, str(CHECKOUT / "examples"))
from private_postgres import PrivatePostgres  # noqa: E402

NAME = "scale/{:010d}"  # the fill's names, in name order as they are put
KILL_NAME = "kill{}/{:08d}"
META_ATTR = "user.deposito"  # where a storage server keeps a blob's metadata (deposito/blobstore.py)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- filling

class Filler:
    """PUTs of small files over many connections, in one thread with a selector.

    Each connection follows the protocol: ``PUT name size replicas``, wait for
    ``OK send``, send the bytes, wait for ``OK stored``, next name.
    """

    def __init__(self, port: int, clients: int, size: int) -> None:
        self.port = port
        self.clients = clients
        self.size = size

    def fill(self, indexes: range, name_of, replicas: int = 1, label: str = "fill",
             stall: float = 300.0) -> dict:
        """PUT the files ``name_of(i)`` for i in ``indexes``; the rate, and the rate over the last fifth."""
        total = len(indexes)
        pending = iter(indexes)
        retry: list[int] = []
        sel = selectors.DefaultSelector()
        conns: dict[socket.socket, dict] = {}
        errors: list[str] = []
        done = 0
        marks: list[tuple[int, float]] = []  # (files done, time) every 1 % of the window
        step = max(1, total // 100)
        size = self.size

        def connect() -> None:
            c = DepositoClient(self.port, 120)
            conns[c.sock] = st = {"c": c, "i": None, "state": None, "buf": c.buf}
            sel.register(c.sock, selectors.EVENT_READ)
            start(st)

        def drop(st: dict) -> None:
            sel.unregister(st["c"].sock)
            del conns[st["c"].sock]
            st["c"].close()

        def start(st: dict) -> None:
            i = retry.pop() if retry else next(pending, None)
            if i is None:
                drop(st)
                return
            st["i"], st["state"] = i, "send"
            st["c"].sock.sendall(f"PUT {name_of(i)} {size} {replicas}\r\n".encode())

        def failed(st: dict, line: str, reconnect: bool) -> None:
            errors.append(f"PUT {name_of(st['i'])}: {line}")
            if len(errors) > max(100, total // 100):
                raise ProtoError(f"{label}: {len(errors)} PUTs failed, the last: {errors[-1]}")
            retry.append(st["i"])
            if reconnect:  # after a broken upload the connection is not to be trusted
                drop(st)
                time.sleep(0.1)
                connect()
            else:
                start(st)

        t0 = time.perf_counter()
        last_t, last_done, progress_t = t0, 0, t0
        for _ in range(min(self.clients, total)):
            connect()
        try:
            while conns:
                for key, _ in sel.select(timeout=5):
                    sock = key.fileobj
                    st = conns.get(sock)
                    if st is None:
                        continue
                    data = sock.recv(65536)
                    if not data:
                        failed(st, "connection closed", True)
                        continue
                    st["buf"] += data
                    while sock in conns and b"\n" in st["buf"]:
                        raw, st["buf"] = st["buf"].split(b"\n", 1)
                        line = raw.rstrip(b"\r").decode("utf-8", "replace")
                        if st["state"] == "send":
                            if line != f"OK send {size}":
                                failed(st, line, False)
                                continue
                            sock.sendall(os.urandom(size))
                            st["state"] = "stored"
                        else:
                            if not line.startswith("OK stored"):
                                failed(st, line, True)
                                break
                            done += 1
                            progress_t = time.perf_counter()
                            if done % step == 0:
                                marks.append((done, progress_t))
                            start(st)
                now = time.perf_counter()
                if now - progress_t > stall:
                    raise ProtoError(f"{label}: no PUT answered for {stall:.0f} s")
                if now - last_t >= 5:
                    rate = (done - last_done) / (now - last_t)
                    eta = (total - done) / rate if rate else float("inf")
                    log(f"  {label}: {done:,}/{total:,} files, {rate:,.0f} PUT/s over the last {now - last_t:.0f} s,"
                        f" {done / (now - t0):,.0f} on average, about {eta / 60:.1f} min left")
                    last_t, last_done = now, done
        finally:
            for st in list(conns.values()):
                drop(st)
            sel.close()
        end = time.perf_counter()
        elapsed = end - t0
        start_of_end = next(((n, t) for n, t in marks if n >= total * 0.8), None)
        end_rate = None
        if start_of_end is not None and end > start_of_end[1]:
            end_rate = (done - start_of_end[0]) / (end - start_of_end[1])
        return {"files": done, "seconds": elapsed, "rate": done / elapsed if elapsed else None,
                "rate_end": end_rate, "errors": len(errors), "error_sample": errors[:5],
                "clients": self.clients, "size": size, "replicas": replicas}


# ---------------------------------------------------------------- measurements

def timed(fn, times: int, budget: float) -> dict:
    """Run fn up to ``times`` times, or until ``budget`` seconds are spent (at least once)."""
    took: list[float] = []
    start = time.perf_counter()
    while len(took) < times and (not took or time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        took.append(time.perf_counter() - t)
    took.sort()
    return {"median": statistics.median(took), "min": took[0], "max": took[-1], "n": len(took),
            "p99": took[min(len(took) - 1, int(len(took) * 0.99))]}


def status(port: int, timeout: float = 600) -> dict[str, int]:
    with DepositoClient(port, timeout) as c:
        reply = c.cmd("STATUS")
    if not reply.startswith("OK "):
        raise ProtoError(f"STATUS: {reply}")
    return {k: int(v) for k, v in reply_fields(reply).items() if v.isdigit()}


def settle(port: int, timeout: float = 600) -> dict:
    """Wait until STATUS has no repair work left; the last STATUS."""
    deadline = time.time() + timeout
    while True:
        st = status(port)
        if not st.get("repairs_queued") and not st.get("repairs_running") or time.time() > deadline:
            return st
        time.sleep(1)


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float | None]:
    """CPU of each process over ``seconds`` of nothing happening, in percent of one core."""
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    time.sleep(seconds)
    after = {n: cpu_seconds(p) for n, p in pids.items()}
    return {n: None if before[n] is None or after[n] is None else 100 * (after[n] - before[n]) / seconds
            for n in pids}


def latencies(cluster: DepositoCluster, count: int, samples: int, repeat: int, budget: float) -> dict:
    out: dict = {}
    port = cluster.port
    with DepositoClient(port, 600) as c:
        def one_status():
            r = c.cmd("STATUS")
            if not r.startswith("OK "):
                raise ProtoError(f"STATUS: {r}")
        out["status"] = timed(one_status, repeat, budget)

        names = [NAME.format(random.randrange(count)) for _ in range(samples)]
        took = []
        for name in names:
            t = time.perf_counter()
            r = c.cmd(f"STAT {name}")
            took.append(time.perf_counter() - t)
            if not r.startswith("OK "):
                raise ProtoError(f"STAT {name}: {r}")
        took.sort()
        out["stat"] = {"median": statistics.median(took), "min": took[0], "max": took[-1], "n": len(took),
                       "p99": took[min(len(took) - 1, int(len(took) * 0.99))]}

        def page(after: str) -> dict:
            first, n = c.count_lines(f'LIST "" {after} 1000')
            if not first.startswith("OK "):
                return {"reply": first}
            if n > 1000:
                return {"reply": f"{first} (not a page: the limit was not applied)"}
            return {"n": n}

        probe = page('""')
        if "reply" in probe:
            out["list_first_page"] = out["list_page"] = {"median": None, "reply": probe["reply"]}
        else:
            out["list_first_page"] = timed(lambda: page('""'), repeat, budget)
            out["list_page"] = timed(lambda: page(NAME.format(random.randrange(count))), repeat, budget)

    for path in ("/metrics", "/api/status"):
        code, length = http_get(cluster.http_port, path, 600)
        if code != 200:
            out[path] = {"median": None, "reply": f"HTTP {code}"}
            continue

        def get(path=path):
            code, _ = http_get(cluster.http_port, path, 600)
            if code != 200:
                raise ProtoError(f"GET {path}: HTTP {code}")
        out[path] = timed(get, repeat, budget)
        out[path]["bytes"] = length
    return out


def whole_list(cluster: DepositoCluster) -> dict:
    """One LIST of every name: its time, its rate, and the proxy's peak RSS growth during it."""
    pid = cluster.pid(cluster.proxy)
    reset_peak(pid)
    before = rss(pid)
    with DepositoClient(cluster.port, 3600) as c:
        t = time.perf_counter()
        first, n = c.count_lines("LIST")
        dt = time.perf_counter() - t
    if not first.startswith("OK "):
        return {"reply": first}
    peak = peak_rss(pid)
    return {"names": n, "seconds": dt, "rate": n / dt if dt else None, "rss_before": before,
            "peak": peak, "growth": None if peak is None or before is None else peak - before}


def restart_proxy(cluster: DepositoCluster, known: str, nservers: int, timeout: float = 900) -> dict:
    """SIGTERM the proxy, start it again on the same --data: seconds until a STAT of a known name answers OK."""
    stop_s, killed = cluster.stop_one(cluster.proxy)
    t0 = time.perf_counter()
    proc = cluster.start(cluster.proxy)
    serving = None
    last = ""
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proc.returncode}: {cluster.tail(cluster.proxy)}")
        try:
            with DepositoClient(cluster.port, 30) as c:
                last = c.cmd(f"STAT {known}")
            if last.startswith("OK "):
                serving = time.perf_counter() - t0
                break
        except (OSError, ProtoError) as e:
            last = str(e)
        time.sleep(0.05)
    out = {"stop_s": stop_s, "stop_needed_sigkill": killed, "serving_s": serving,
           "last_reply": last if serving is None else None}
    while time.perf_counter() - t0 < timeout:
        if len(cluster.up_servers()) >= nservers:
            out["servers_back_s"] = time.perf_counter() - t0
            break
        time.sleep(0.1)
    out["rss"] = rss(proc.pid)
    return out


def plant_stray(data: Path) -> str | None:
    """Put one stray blob on a stopped server's disk: a copy of one of its blobs
    under a new id that sorts last. Its inventory must then differ from the
    catalog, so the proxy logs ``inventory of <id>`` once it has reconciled it
    (it logs nothing for an inventory that matches), and collects the stray
    as garbage. Returns the stray's id, or None when no blob was found."""
    for blobs in [data / "blobs"] if (data / "blobs").is_dir() else data.rglob("blobs"):
        for sub in sorted(p for p in blobs.iterdir() if p.is_dir()):
            for entry in sorted(sub.iterdir()):
                if not re.fullmatch(r"[0-9a-f]{32}", entry.name):
                    continue
                stray = "ffffffff" + uuid.uuid4().hex[:24]
                target = blobs / stray[:2] / stray
                target.parent.mkdir(exist_ok=True)
                try:
                    meta = json.loads(os.getxattr(entry, META_ATTR))
                    shutil.copyfile(entry, target)
                    meta["blob"] = stray
                    os.setxattr(target, META_ATTR, json.dumps(meta, sort_keys=True).encode())
                except OSError:
                    meta = json.loads((sub / (entry.name + ".meta")).read_bytes())
                    shutil.copyfile(entry, target)
                    meta["blob"] = stray
                    (target.parent / (stray + ".meta")).write_text(json.dumps(meta, sort_keys=True))
                os.sync()
                return stray
    return None


def restart_server(cluster: DepositoCluster, sid: str, timeout: float = 1800) -> dict:
    """Stop a storage server, start it again: seconds until it has joined, and
    until the proxy has reconciled its inventory; its peak RSS."""
    name = cluster.prefix + sid
    blobs = next((int(reply_fields(" ".join(w)).get("blobs", -1)) for w in cluster.servers() if w[0] == sid), None)
    stop_s, killed = cluster.stop_one(name)
    stray = plant_stray(cluster.root / sid)
    proxy_log = LogFollower(cluster.logfile(cluster.proxy))
    line = re.compile(rf"inventory of {re.escape(sid)}\b")
    t0 = time.perf_counter()
    proc = cluster.start(name)
    out: dict = {"server": sid, "blobs": blobs, "stop_s": stop_s, "stop_needed_sigkill": killed, "stray": stray,
                 "join_s": None, "inventory_s": None}
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"{sid} exited with {proc.returncode}: {cluster.tail(name)}")
            if out["join_s"] is None and sid in cluster.up_servers():
                out["join_s"] = time.perf_counter() - t0
            found = next((ln for ln in proxy_log.lines() if line.search(ln)), None)
            if found:
                out["inventory_s"] = time.perf_counter() - t0
                out["inventory_line"] = found[line.search(found).start():][:300]
                if out["join_s"] is None:
                    out["join_s"] = out["inventory_s"]
                break
            if stray is None and out["join_s"] is not None:
                break  # nothing planted: no line to wait for
            time.sleep(0.1)
    finally:
        proxy_log.close()
    out["peak_rss"] = peak_rss(proc.pid)
    out["rss"] = rss(proc.pid)
    return out


def kill_server(cluster: DepositoCluster, filler: Filler, step: int, nfiles: int, poll: float,
                timeout: float) -> dict:
    """A fourth server joins, takes a share of ``nfiles`` files with 2 copies
    (so that each of its files has a copy elsewhere), and is killed (SIGKILL):
    the time until it is declared dead, until all its files are queued for a
    copy, and until all are copied again."""
    sid = f"k{step}"
    name = cluster.add_server(sid, f"zk{step}")
    log(f"  kill: {sid} joined; putting {nfiles:,} files with 2 copies")
    prefix = KILL_NAME.format(step, 0).split("/")[0]
    put = filler.fill(range(nfiles), lambda i: KILL_NAME.format(step, i), replicas=2, label="kill set")
    held = 0
    with DepositoClient(cluster.port, 600) as c:
        for i in range(nfiles):
            r = c.cmd(f"STAT {KILL_NAME.format(step, i)}")
            if sid in (reply_fields(r).get("servers") or "").split(","):
                held += 1
    out: dict = {"server": sid, "kill_set": nfiles, "prefix": prefix, "put": put, "held": held,
                 "size": filler.size}
    if not held:
        out["error"] = f"{sid} holds none of the files"
        return out
    before = settle(cluster.port)
    out["status_before"] = before
    log(f"  kill: {sid} holds {held:,} files; SIGKILL")
    cluster.kill(name)
    t0 = time.perf_counter()
    samples: list[tuple[float, str, int, int, int]] = []
    marks = {"down_s": None, "dead_s": None, "queued_s": None, "copied_s": None}
    last_log = t0
    while time.perf_counter() - t0 < timeout:
        t = time.perf_counter() - t0
        state = next((w[2] for w in cluster.servers(600) if w[0] == sid), "?")
        asked = time.perf_counter()
        st = status(cluster.port)
        cost = time.perf_counter() - asked
        under, queued, running = st.get("under", 0), st.get("repairs_queued", 0), st.get("repairs_running", 0)
        samples.append((round(t, 3), state, under, queued, running))
        if state in ("down", "dead") and marks["down_s"] is None:
            marks["down_s"] = t
        if state == "dead" and marks["dead_s"] is None:
            marks["dead_s"] = t
        if marks["dead_s"] is not None:
            if marks["queued_s"] is None and (under == 0 or queued + running >= under):
                marks["queued_s"] = t
            if under == 0 and queued == 0 and running == 0:
                marks["copied_s"] = t
                break
        if time.perf_counter() - last_log >= 10:
            log(f"  kill: {t:.0f} s after: {sid} {state}, under={under:,} queued={queued:,} running={running}")
            last_log = time.perf_counter()
        # a STATUS that costs the proxy much would slow the copying it watches: keep it to a tenth of the time
        time.sleep(max(0.0, max(poll, 10 * cost) - (time.perf_counter() - t0 - t)))
    out.update(marks)
    out["polls"] = len(samples)
    out["samples"] = samples if len(samples) <= 2000 else samples[:: len(samples) // 2000 + 1]
    if marks["dead_s"] is not None:
        out["queued_after_dead_s"] = None if marks["queued_s"] is None else marks["queued_s"] - marks["dead_s"]
        if marks["copied_s"] is not None:
            took = marks["copied_s"] - marks["dead_s"]
            out["copied_after_dead_s"] = took
            out["copy_files_per_s"] = held / took if took else None
            out["copy_mib_per_s"] = held * filler.size / MiB / took if took else None
    return out


def measure_step(cluster: DepositoCluster, a, count: int, nservers: int) -> dict:
    out: dict = {}
    log("  settling")
    out["status"] = settle(cluster.port)
    time.sleep(a.settle)
    pids = cluster.pids()
    log(f"  idle CPU over {a.idle:.0f} s")
    out["loadavg_idle"] = loadavg()  # the machine's other work shows here
    out["idle_cpu"] = idle_cpu(pids, a.idle)
    out["rss"] = {n: rss(p) for n, p in pids.items()}
    out["peak_rss"] = {n: peak_rss(p) for n, p in pids.items()}
    log("  STATUS, STAT, LIST page, /metrics, /api/status")
    out["latency"] = latencies(cluster, count, a.samples, a.repeat, a.budget)
    log("  whole LIST")
    out["whole_list"] = whole_list(cluster)
    log("  proxy restart")
    out["proxy_restart"] = restart_proxy(cluster, NAME.format(0), nservers)
    settle(cluster.port)
    log("  storage server restart")
    out["server_restart"] = restart_server(cluster, "s0")
    return out


def summary(rec: dict) -> str:
    lat = rec.get("latency") or {}

    def ms(key):
        v = (lat.get(key) or {}).get("median")
        return "n/a" if v is None else f"{v * 1000:.2f} ms"
    wl = rec.get("whole_list") or {}
    pr = rec.get("proxy_restart") or {}
    sr = rec.get("server_restart") or {}
    return (f"idle CPU {fmt((rec.get('idle_cpu') or {}).get('proxy'), 1)}%, STATUS {ms('status')},"
            f" STAT {ms('stat')}, /metrics {ms('/metrics')}, /api/status {ms('/api/status')},"
            f" LIST page {ms('list_page')}, whole LIST {fmt(wl.get('seconds'), 2)} s,"
            f" proxy RSS {_mib((rec.get('rss') or {}).get('proxy'))} MiB,"
            f" proxy restart {fmt(pr.get('serving_s'), 2)} s, server inventory {fmt(sr.get('inventory_s'), 2)} s")


# ---------------------------------------------------------------- report

def _med(rec: dict, key: str) -> float | None:
    return ((rec.get("latency") or {}).get(key) or {}).get("median")


def _ms(v) -> str:
    if v is None:
        return "n/a"
    return f"{v * 1000:,.2f}" if v < 0.1 else f"{v * 1000:,.0f}"


def _s(v, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def _mib(v) -> str:
    return "n/a" if v is None else f"{v / MiB:,.1f}"


def targets(res: dict) -> list[tuple[str, str, bool | None]]:
    """(target, figure, met) for each target of 1,000,000 files, at the largest step."""
    steps = res.get("steps") or []
    if not steps:
        return []
    r = steps[-1]
    base = next((s for s in steps[:-1] if s["files"] == 10_000), steps[0])  # else the first step
    lat = lambda k: _med(r, k)  # noqa: E731
    wl = r.get("whole_list") or {}
    cpu = (r.get("idle_cpu") or {}).get("proxy")
    proxy_rss = (r.get("rss") or {}).get("proxy")
    rate, base_rate = (r.get("fill") or {}).get("rate_end"), (base.get("fill") or {}).get("rate_end")
    pr = (r.get("proxy_restart") or {}).get("serving_s")
    sr = r.get("server_restart") or {}
    kill = next((s.get("kill") for s in reversed(steps) if s.get("kill")), None) or {}

    def under(v, limit):
        return None if v is None else v < limit
    rows = [
        ("idle proxy CPU < 1% of a core", f"{_s(cpu)}%", under(cpu, 1.0)),
        ("STATUS < 20 ms", f"{_ms(lat('status'))} ms", under(lat("status"), 0.020)),
        ("/metrics < 20 ms", f"{_ms(lat('/metrics'))} ms", under(lat("/metrics"), 0.020)),
        ("/api/status < 20 ms", f"{_ms(lat('/api/status'))} ms", under(lat("/api/status"), 0.020)),
        ("STAT < 1 ms (median)", f"{_ms(lat('stat'))} ms", under(lat("stat"), 0.001)),
        ("1000-name LIST page < 20 ms", f"{_ms(lat('list_page'))} ms" if lat("list_page") is not None
         else f"n/a: {((r.get('latency') or {}).get('list_page') or {}).get('reply', '')}",
         under(lat("list_page"), 0.020)),
        ("whole LIST >= 200,000 names/s", f"{_s(wl.get('rate'), 0)} names/s",
         None if wl.get("rate") is None else wl["rate"] >= 200_000),
        ("whole LIST: proxy peak RSS within 16 MiB", f"+{_mib(wl.get('growth'))} MiB",
         None if wl.get("growth") is None else wl["growth"] <= 16 * MiB),
        ("proxy RSS < 128 MiB", f"{_mib(proxy_rss)} MiB", under(proxy_rss, 128 * MiB)),
        (f"PUT rate >= 90% of the rate at {base['files']:,} files",
         f"{_s(rate, 0)} vs {_s(base_rate, 0)} PUT/s ({_s(100 * rate / base_rate, 0) if rate and base_rate else 'n/a'}%)",
         None if not rate or not base_rate or base is r else rate >= 0.9 * base_rate),
        ("proxy restart to serving < 5 s", f"{_s(pr)} s", under(pr, 5.0)),
        ("a server with 500,000 blobs joins and is reconciled < 30 s",
         f"{_s(sr.get('inventory_s'))} s with {fmt(sr.get('blobs'))} blobs", under(sr.get("inventory_s"), 30.0)),
        ("a dead server's files all queued < 10 s after it is declared dead",
         f"{_s(kill.get('queued_after_dead_s'))} s for {fmt(kill.get('held'))} files",
         under(kill.get("queued_after_dead_s"), 10.0)),
        ("then copied at the speed of the bytes",
         f"{_s(kill.get('copy_files_per_s'), 0)} files/s, {_s(kill.get('copy_mib_per_s'))} MiB/s", None),
    ]
    return rows


def render(res: dict, out_md: Path, out_png: Path) -> None:
    steps = res.get("steps") or []
    m = res.get("machine") or {}
    L: list[str] = ["# Deposito at scale\n"]
    if res.get("catalog", "SQLite") != "SQLite":
        L.append(f"The catalog in {res['catalog']}.\n")
    L.append(f"Run {res.get('started')}, code {m.get('git', '?')}; {res.get('clients')} clients put"
             f" {res.get('size')}-byte files with 1 copy through the text protocol; idle CPU over"
             f" {res.get('idle')} s; latencies are medians (STAT of {res.get('samples')} random names, the others"
             f" up to {res.get('repeat')} times). One row per step: the catalog held that many files.\n")
    L.append("## At rest\n")
    L.append("| files | PUT/s (window / its last fifth) | idle proxy CPU | STATUS ms | STAT ms | /metrics ms"
             " | /api/status ms | LIST page ms | whole LIST s | names/s | LIST peak RSS growth MiB | proxy RSS MiB"
             " | load average |")
    L.append("|" + "---|" * 13)
    for r in steps:
        f = r.get("fill") or {}
        wl = r.get("whole_list") or {}
        L.append(f"| {r['files']:,} | {_s(f.get('rate'), 0)} / {_s(f.get('rate_end'), 0)}"
                 f" | {_s((r.get('idle_cpu') or {}).get('proxy'))}% | {_ms(_med(r, 'status'))} | {_ms(_med(r, 'stat'))}"
                 f" | {_ms(_med(r, '/metrics'))} | {_ms(_med(r, '/api/status'))} | {_ms(_med(r, 'list_page'))}"
                 f" | {_s(wl.get('seconds'))} | {_s(wl.get('rate'), 0)} | {_mib(wl.get('growth'))}"
                 f" | {_mib((r.get('rss') or {}).get('proxy'))} | {r.get('loadavg_idle', '?')} |")
    pages = {((r.get("latency") or {}).get("list_page") or {}).get("reply") for r in steps} - {None}
    if pages:
        L.append(f"\nLIST page `n/a`: the proxy answered `LIST \"\" <after> 1000` with {'; '.join(sorted(pages))}.")
    L.append("\nLoad average: the machine's, as the idle CPU was measured (1, 5 and 15 minutes); other work on"
             " the machine slows the fill and the latencies.")
    L.append("\n## Restarts and a dead server\n")
    L.append("| files | proxy restart to serving s | servers back s | server restart: joined s | inventory reconciled s"
             " | its blobs | its peak RSS MiB | killed server's files | declared dead s | all queued after dead s"
             " | all copied after dead s | copy files/s | copy MiB/s |")
    L.append("|" + "---|" * 13)
    for r in steps:
        pr, sr, k = r.get("proxy_restart") or {}, r.get("server_restart") or {}, r.get("kill") or {}
        L.append(f"| {r['files']:,} | {_s(pr.get('serving_s'))} | {_s(pr.get('servers_back_s'))}"
                 f" | {_s(sr.get('join_s'))} | {_s(sr.get('inventory_s'))} | {fmt(sr.get('blobs'))}"
                 f" | {_mib(sr.get('peak_rss'))} | {fmt(k.get('held')) if k else '-'}"
                 f" | {_s(k.get('dead_s')) if k else '-'} | {_s(k.get('queued_after_dead_s')) if k else '-'}"
                 f" | {_s(k.get('copied_after_dead_s')) if k else '-'} | {_s(k.get('copy_files_per_s'), 0) if k else '-'}"
                 f" | {_s(k.get('copy_mib_per_s')) if k else '-'} |")
    L.append(f"\nDeath is counted from the SIGKILL; `--dead-after {res.get('dead_after')}`. The killed server joined"
             " after the fill and took a share of a set of files with 2 copies, so each of its files has a copy"
             " elsewhere. \"All queued\": the first STATUS after it is declared dead with `repairs_queued +"
             " repairs_running >= under`; \"all copied\": `under=0 repairs_queued=0 repairs_running=0`"
             f" (SERVERS and STATUS polled every {res.get('poll')} s, or every 10 times the last STATUS's latency if"
             " that is longer, so that the watching takes at most a tenth of the proxy's time)."
             " A server restart is counted until the proxy logs `inventory of <id>`: it does when the inventory"
             " differed from the catalog, so one stray blob is put on the stopped server's disk first.\n")
    L.append("## Targets at 1,000,000 files\n")
    largest = steps[-1]["files"] if steps else 0
    if largest < 1_000_000:
        L.append(f"Measured at {largest:,} files, the largest step of this run, not at 1,000,000.\n")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for target, figure, ok in targets(res):
        L.append(f"| {target} | {figure} | {'n/a' if ok is None else ('met' if ok else 'NOT met')} |")
    L.append("\n## Machine and command\n")
    L.append(f"- CPU: {m.get('cpu', '?')}, {m.get('cores')} cores; memory {m.get('memory_gib')} GiB;"
             f" Python {m.get('python')}, Twisted {m.get('twisted')}, kernel {m.get('kernel')}")
    L.append(f"- data: {res.get('disk')}; load average {res.get('loadavg_start')} at the start,"
             f" {res.get('loadavg_end')} at the end; {_s((res.get('elapsed_s') or 0) / 60, 1)} minutes in all")
    L.append(f"- command: `{res.get('command')}`")
    L.append(f"- raw figures: `{res.get('json')}`")
    for c in res.get("commands") or []:
        L.append(f"- `{c}`")
    out_md.write_text("\n".join(L) + "\n")
    chart(res, out_png)


def chart(res: dict, out_png: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    steps = res.get("steps") or []
    if not steps:
        return
    x = [r["files"] for r in steps]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    fig.suptitle(f"Deposito: cost against the number of files ({res.get('started')},"
                 f" {(res.get('machine') or {}).get('git', '?')})")

    def plot(ax, label, ys, target=None, **kw):
        pts = [(a, b) for a, b in zip(x, ys) if b is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label, **kw)
            if target is not None:
                ax.axhline(target, linestyle=":", linewidth=0.8, color=ax.lines[-1].get_color())

    ax = axes[0][0]
    for key, label, target in (("status", "STATUS", 20), ("stat", "STAT", 1), ("/metrics", "/metrics", 20),
                               ("/api/status", "/api/status", 20), ("list_page", "LIST page (1000)", 20)):
        plot(ax, label, [None if _med(r, key) is None else _med(r, key) * 1000 for r in steps], target)
    plot(ax, "whole LIST", [None if (r.get("whole_list") or {}).get("seconds") is None
                            else r["whole_list"]["seconds"] * 1000 for r in steps], linestyle="--")
    ax.set_yscale("log")
    ax.set_ylabel("ms (dotted: target at 1,000,000)")
    ax.set_title("latency")

    ax = axes[0][1]
    plot(ax, "idle proxy CPU", [(r.get("idle_cpu") or {}).get("proxy") for r in steps], 1.0)
    ax.set_ylabel("% of a core (dotted: target)")
    ax.set_ylim(bottom=0)
    ax.set_title("CPU at rest, PUT rate")
    rate_ax = ax.twinx()
    pts = [(a, (r.get("fill") or {}).get("rate_end")) for a, r in zip(x, steps)]
    pts = [p for p in pts if p[1] is not None]
    if pts:
        rate_ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s", color="tab:green",
                     label="PUT/s at the end of the fill")
        rate_ax.set_ylim(bottom=0)
        rate_ax.set_ylabel("PUT/s")
        rate_ax.legend(fontsize=8, loc="lower right")

    ax = axes[1][0]
    plot(ax, "proxy RSS", [None if (r.get("rss") or {}).get("proxy") is None else r["rss"]["proxy"] / MiB
                           for r in steps], 128)
    plot(ax, "proxy peak RSS growth in a whole LIST",
         [None if (r.get("whole_list") or {}).get("growth") is None else r["whole_list"]["growth"] / MiB
          for r in steps], 16)
    plot(ax, "restarted server's peak RSS",
         [None if (r.get("server_restart") or {}).get("peak_rss") is None else r["server_restart"]["peak_rss"] / MiB
          for r in steps])
    ax.set_ylabel("MiB")
    ax.set_title("memory")

    ax = axes[1][1]
    plot(ax, "proxy restart to serving", [(r.get("proxy_restart") or {}).get("serving_s") for r in steps], 5)
    plot(ax, "server restart to inventory reconciled",
         [(r.get("server_restart") or {}).get("inventory_s") for r in steps], 30)
    plot(ax, "dead server: all queued, after declared dead",
         [(r.get("kill") or {}).get("queued_after_dead_s") for r in steps], 10)
    plot(ax, "dead server: all copied, after declared dead",
         [(r.get("kill") or {}).get("copied_after_dead_s") for r in steps])
    ax.set_yscale("symlog", linthresh=0.1)  # "all queued" may be 0: linear below 0.1 s
    ax.set_ylabel("s (dotted: target)")
    ax.set_title("restarts and repair")

    for row in axes:
        for ax in row:
            ax.set_xscale("log")
            ax.set_xlabel("files in the catalog")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main

def parse_count(s: str) -> int:
    s = s.strip().replace("_", "").lower()
    mult = {"k": 1000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def parse_size(s: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KM]i?B?)?", s.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r}")
    return int(m.group(1)) * {"": 1, "K": KiB, "M": MiB}[(m.group(2) or "").upper()[:1]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="10000,100000,1000000", help="file counts to measure at (1k, 1m allowed)")
    ap.add_argument("--clients", type=int, default=32, help="connections putting files at once")
    ap.add_argument("--size", type=parse_size, default=KiB, help="file size (default 1KiB)")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds over which idle CPU is measured")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the fill before measuring")
    ap.add_argument("--samples", type=int, default=200, help="STATs of random names per step")
    ap.add_argument("--repeat", type=int, default=20,
                    help="times each other request is timed (fewer if --budget runs out)")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds spent at most timing one kind of request")
    ap.add_argument("--dead-after", type=float, default=10.0, help="the proxy's --dead-after")
    ap.add_argument("--kill", action="store_true", help="kill a server at every step, not only after the last")
    ap.add_argument("--kill-files", type=parse_count,
                    help="files with 2 copies put for the server that is killed (default: 10%% of the step,"
                         " at least 1000)")
    ap.add_argument("--poll", type=float, default=0.2, help="seconds between STATUS polls after the kill")
    ap.add_argument("--kill-timeout", type=float, default=3600.0)
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="where the temporary data directory goes")
    ap.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    ap.add_argument("--postgres", action="store_true",
                    help="the catalog in a private PostgreSQL (examples/private_postgres.py), not SQLite")
    ap.add_argument("--out", help="the report (default bench/SCALE.md, or SCALE-postgres.md)")
    ap.add_argument("--chart", help="the chart (default bench/scale.png, or scale-postgres.png)")
    ap.add_argument("--render", metavar="JSON", help="only redraw SCALE.md and the chart from a saved JSON")
    a = ap.parse_args(argv)
    suffix = "-postgres" if a.postgres else ""
    a.out = a.out or str(HERE / f"SCALE{suffix}.md")
    a.chart = a.chart or str(HERE / f"scale{suffix}.png")
    for out in (a.out, a.chart):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    if a.render:
        render(json.loads(Path(a.render).read_text()), Path(a.out), Path(a.chart))
        log(f"wrote {a.out} and {a.chart}")
        return 0

    steps = sorted(parse_count(s) for s in a.steps.split(","))
    nservers = 3
    started = time.time()
    res: dict = {
        "started": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "steps_wanted": steps, "clients": a.clients,
        "size": a.size, "idle": a.idle, "samples": a.samples, "repeat": a.repeat, "dead_after": a.dead_after,
        "poll": a.poll, "loadavg_start": loadavg(), "machine": machine(), "steps": [],
        "catalog": "PostgreSQL (a private server, default settings: fsync on)" if a.postgres else "SQLite",
        "command": " ".join([".venv/bin/python", "bench/scale.py"] + (argv if argv is not None else sys.argv[1:])),
    }
    jdir = HERE / "work"
    jdir.mkdir(exist_ok=True)
    jpath = jdir / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    res["json"] = str(jpath.relative_to(CHECKOUT))
    root = Path(tempfile.mkdtemp(prefix="deposito-scale-", dir=a.workdir))
    res["disk"] = disk_of(root)
    procs = Processes()
    postgres = None

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (in the background)
    try:
        log(f"data under {root}")
        catalog = []
        if a.postgres:  # in a folder of its own, which it gives to the postgres user when run as root
            postgres = PrivatePostgres(Path(tempfile.mkdtemp(prefix="deposito-scale-pg-", dir=a.workdir)), free_port())
            catalog = ["--catalog", postgres.start()]
            log(f"PostgreSQL in {postgres.folder}")
        cluster = DepositoCluster(procs, root, nservers, proxy_args=["--dead-after", f"{a.dead_after:g}", *catalog],
                                  http=True)
        res["commands"] = cluster.commands
        filler = Filler(cluster.port, a.clients, a.size)
        filled = 0  # files put by the fill, named NAME.format(0 .. filled - 1)
        in_catalog = 0
        for n, step in enumerate(steps):
            rec: dict = {"files": step}
            want = step - in_catalog
            log(f"step {step:,}: putting {want:,} files of {a.size} bytes, 1 copy, {a.clients} clients")
            rec["fill"] = filler.fill(range(filled, filled + want), NAME.format, label=f"fill to {step:,}")
            filled += want
            in_catalog += want
            log(f"  {rec['fill']['rate']:,.0f} PUT/s ({rec['fill']['rate_end']:,.0f} over the last fifth),"
                f" {rec['fill']['errors']} errors")
            rec.update(measure_step(cluster, a, filled, nservers))
            log("  " + summary(rec))
            if a.kill or n == len(steps) - 1:
                nkill = a.kill_files or max(1000, step // 10)
                rec["kill"] = kill_server(cluster, filler, step, nkill, a.poll, a.kill_timeout)
                in_catalog += nkill
                k = rec["kill"]
                log(f"  kill: {fmt(k.get('held'))} files; dead after {_s(k.get('dead_s'))} s, all queued"
                    f" {_s(k.get('queued_after_dead_s'))} s and all copied {_s(k.get('copied_after_dead_s'))} s"
                    f" after that ({_s(k.get('copy_files_per_s'), 0)} files/s)")
            rec["loadavg"] = loadavg()
            died = [f"{name} exited with {p.returncode}" for name, p in procs.procs.items() if p.poll() is not None]
            if died:
                rec["died"] = died
                log(f"  during the step: {', '.join(died)}")
            res["steps"].append(rec)
            jpath.write_text(json.dumps(res, indent=1))
        res["client_peak_rss"] = peak_rss(os.getpid())
        res["loadavg_end"] = loadavg()
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        raise
    finally:
        t = time.perf_counter()
        killed = procs.stop()
        log(f"stopped every process in {time.perf_counter() - t:.1f} s"
            + (f"; {', '.join(killed)} only by SIGKILL" if killed else ""))
        if killed:
            res["stopped_by_sigkill"] = killed
        if postgres is not None:
            postgres.stop()
            shutil.rmtree(postgres.folder, ignore_errors=True)
        res["elapsed_s"] = time.time() - started
        if res["steps"]:
            jpath.write_text(json.dumps(res, indent=1))
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root}")
    render(res, Path(a.out), Path(a.chart))
    log(f"wrote {a.out}, {a.chart} and {jpath}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(f"scale: stopped ({e or 'interrupted'}); every process it started was stopped", file=sys.stderr)
        sys.exit(130)
