"""Where a small PUT's time goes: one proxy on SQLite and three servers,
one client putting files (4 KiB, 2 copies unless told); every process is traced with
``strace -f -ttt`` during some PUTs, and the system calls of the PUT of
median duration are printed in time order, with a summary of what it waited
on in series.

Run by hand: ``.venv/bin/python bench/put_timeline.py [--puts 40] [--size 4096] [--replicas 2]``.
strace slows every system call (times here are about 3x those of an
untraced PUT): read it for the order of things and their counts, and the
untraced p50 printed first for the real time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import DepositoCluster, scratch  # noqa: E402
from run import DepositoSmall  # noqa: E402

SKIP = "!mmap,munmap,mprotect,brk,madvise,getpid,gettid,clock_gettime"


def traced(files: dict[str, Path], start: float, end: float) -> list[tuple[float, str, str]]:
    """The calls of every process between ``start`` and ``end``: (time, process, call)."""
    calls = []
    for name, path in files.items():
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3 and re.fullmatch(r"\d+\.\d+", parts[1]) and start <= float(parts[1]) <= end:
                calls.append((float(parts[1]), name, parts[2]))
    return sorted(calls)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--puts", type=int, default=40, help="traced PUTs (default 40)")
    ap.add_argument("--size", type=int, default=4096, help="bytes per file (default 4096)")
    ap.add_argument("--replicas", type=int, default=2, help="copies of each file (default 2)")
    a = ap.parse_args()
    if shutil.which("strace") is None:
        print("strace is not installed (Debian: apt-get install strace)")
        return 2
    data = os.urandom(a.size)
    with scratch("deposito-timeline-") as (root, procs):
        cluster = DepositoCluster(procs, root / "cluster")
        client = DepositoSmall(cluster.port)
        times = []
        for i in range(500):
            t = time.perf_counter()
            client.put(f"warm/{i}", data, a.replicas)
            times.append(time.perf_counter() - t)
        print(f"untraced: PUT of {a.size} bytes, {a.replicas} copies, p50 {statistics.median(times[100:]) * 1e3:.2f} ms"
              f" over {len(times) - 100} PUTs")
        files = {name: root / f"trace.{name}" for name in cluster.pids()}
        tracers = [subprocess.Popen(["strace", "-f", "-ttt", "-T", "-e", f"trace={SKIP}", "-o", str(files[name]),
                                     "-p", str(pid)], stderr=subprocess.DEVNULL)
                   for name, pid in cluster.pids().items()]
        time.sleep(1.5)  # attached
        spans = []
        for i in range(a.puts):
            t = time.time()
            client.put(f"traced/{i}", data, a.replicas)
            spans.append((t, time.time()))
            time.sleep(0.02)
        time.sleep(0.5)
        for tracer in tracers:
            tracer.terminate()
            tracer.wait()
        start, end = sorted(spans, key=lambda s: s[1] - s[0])[len(spans) // 2]
        calls = traced(files, start - 0.0002, end + 0.0002)
        print(f"traced: the median PUT took {(end - start) * 1e3:.2f} ms; its system calls:")
        for t, name, call in calls:
            print(f"{(t - start) * 1e3:8.3f} {name:6} {call[:120]}")
        count = lambda pattern, who=None: sum(1 for _, n, c in calls if re.match(pattern, c) and (who is None or n == who))
        print("in all:", ", ".join(f"{what} {count(p, who)}" for what, p, who in (
            ("catalog WAL frames written (pwrite64 of 4 KiB pages)", r"pwrite64\(\d+, .*, 4096, \d+\)", "proxy"),
            ("fsync/fdatasync on the proxy", r"f(data)?sync", "proxy"),
            ("fsync on the servers", r"fsync", None),
            ("futex calls (thread hand-offs)", r"futex", None),
            ("epoll_ctl", r"epoll_ctl", None),
            ("sendto", r"sendto", None))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
