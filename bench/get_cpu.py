"""What a big GET (and, with ``--puts``, a big PUT) costs each process: one
file per size, read through the proxy again and again (a fresh connection
each time), its MiB/s and the CPU time (user and system) each process spent
per GET: the client (this script), the proxy and the servers that worked.

With ``--checkout`` given more than once, each checkout's installed
Deposito (its .venv) runs a cluster of its own, in turns round by round,
so that two versions are compared in one run on the same machine.

Run by hand: ``.venv/bin/python bench/get_cpu.py [--sizes 64MiB,1GiB]
[--replicas 1] [--rounds 2] [--puts 3] [--checkout DIR ...]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import CHECKOUT, DepositoClient, DepositoCluster, human, make_file, scratch  # noqa: E402
from run import parse_size  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
READS = 2 << 30  # bytes read per size and round (at least 3 GETs)


def cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds a process has run."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def measure(cluster: DepositoCluster, name: str, size: int, puts: int = 0, src: Path | None = None,
            replicas: int = 1) -> str:
    """GET ``name`` over and over (or PUT ``src`` as it ``puts`` times):
    MiB/s (median, range) and CPU ms per request."""
    pids = cluster.pids()
    n = puts or max(3, READS // size)
    before = {k: cpu(p) for k, p in pids.items()}
    mine = os.times()
    times = []
    for _ in range(n):
        with DepositoClient(cluster.port, 300) as c:
            t = time.perf_counter()
            if puts:
                assert src is not None
                c.put_file(name, src, size, replicas)
                got = size
            else:
                got, _ = c.get_sink(name)
            times.append(time.perf_counter() - t)
        assert got == size
    mine_after = os.times()
    after = {k: cpu(p) for k, p in pids.items()}
    spent = {k: ((after[k][0] - before[k][0]) / n * 1e3, (after[k][1] - before[k][1]) / n * 1e3) for k in pids}
    spent["client"] = ((mine_after.user - mine.user) / n * 1e3, (mine_after.system - mine.system) / n * 1e3)
    busy = {k: v for k, v in spent.items() if k in ("client", "proxy") or sum(v) > 1}
    mib = [size / (1 << 20) / t for t in times]
    what = "PUT" if puts else "GET"
    return (f"{statistics.median(mib):,.0f} MiB/s [{min(mib):,.0f}-{max(mib):,.0f}] of {n} {what}s; CPU ms per {what} "
            "(user+system): " + ", ".join(f"{k} {u:.1f}+{s:.1f}" for k, (u, s) in busy.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64MiB,1GiB")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--puts", type=int, default=0, help="PUTs of each size per round, timed before its GETs")
    ap.add_argument("--checkout", action="append", type=Path, help="a checkout with Deposito in its .venv")
    a = ap.parse_args()
    checkouts = a.checkout or [CHECKOUT]
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    with scratch("deposito-get-cpu-") as (root, procs):
        clusters = [DepositoCluster(procs, root / f"c{i}", prefix=f"c{i}-", checkout=checkout)
                    for i, checkout in enumerate(checkouts)]
        for cluster in clusters:
            cluster.wait_up(3)
        sources = {size: root / f"src-{size}" for size in sizes}
        for size, src in sources.items():
            make_file(src, size)
            for cluster in clusters:
                with DepositoClient(cluster.port, 300) as c:
                    c.put_file(f"big/{size}", src, size, a.replicas)
        copies = f"{a.replicas} cop{'y' if a.replicas == 1 else 'ies'}"
        for r in range(a.rounds):
            for size in sizes:
                for checkout, cluster in zip(checkouts, clusters):
                    if a.puts:
                        print(f"round {r + 1}, {human(size)}, {copies}, {checkout}: "
                              f"{measure(cluster, f'big/{size}', size, a.puts, sources[size], a.replicas)}", flush=True)
                    print(f"round {r + 1}, {human(size)}, {copies}, {checkout}: "
                          f"{measure(cluster, f'big/{size}', size)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
