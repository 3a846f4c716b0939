"""What a small PUT and GET cost, and where a PUT waits: N clients (one
connection each, threads of this process) put 4 KiB files for a few
seconds, then get them back. Printed per phase: the rate, for PUTs the
median time to ``OK send`` and from the bytes to ``OK stored``, and the CPU
time (user and system) each process of the cluster spent per request.

With ``--checkout`` given more than once, each checkout's installed
Deposito (its .venv) runs a cluster of its own, in turns round by round,
so that two versions are compared in one run on the same machine.

Run by hand: ``.venv/bin/python bench/small_cpu.py [--clients 16]
[--seconds 6] [--rounds 3] [--replicas 2] [--checkout DIR ...]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from get_cpu import cpu  # noqa: E402
from harness import CHECKOUT, DepositoClient, DepositoCluster, scratch  # noqa: E402

SIZE = 4096


def phase(cluster: DepositoCluster, clients: int, seconds: float, replicas: int, tag: str,
          counts: list[int] | None = None) -> tuple[list[int], str]:
    """PUT new files for ``seconds`` (``counts`` None), or GET the files each
    client put (``counts``, per client); returns the count per client and a
    line of figures."""
    data = os.urandom(SIZE)
    done = [0] * clients
    to_send: list[float] = []
    to_stored: list[float] = []
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        try:
            with DepositoClient(cluster.port, 60) as c:
                n = 0
                while time.monotonic() < stop:
                    if counts is None:
                        t0 = time.perf_counter()
                        reply = c.cmd(f"PUT {tag}/{i}/{n} {SIZE} {replicas}")
                        t1 = time.perf_counter()
                        assert reply == f"OK send {SIZE}", reply
                        c.sock.sendall(data)
                        reply = c.line()
                        assert reply.startswith("OK stored"), reply
                        to_send.append(t1 - t0)
                        to_stored.append(time.perf_counter() - t1)
                    else:
                        got, _ = c.get_sink(f"{tag}/{i}/{n % max(1, counts[i])}")
                        assert got == SIZE
                    n += 1
                done[i] = n
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    pids = cluster.pids()
    before = {k: cpu(p) for k, p in pids.items()}
    start = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if errors:
        raise errors[0]
    after = {k: cpu(p) for k, p in pids.items()}
    n = sum(done)
    spent = ", ".join(f"{k} {(after[k][0] - before[k][0]) / n * 1e3:.2f}"
                      f"+{(after[k][1] - before[k][1]) / n * 1e3:.2f}" for k in pids)
    line = f"{'PUT' if counts is None else 'GET'} {n / elapsed:,.0f}/s"
    if counts is None:
        line += (f"; to OK send {statistics.median(to_send) * 1e3:.2f} ms,"
                 f" bytes to OK stored {statistics.median(to_stored) * 1e3:.2f} ms")
    return done, line + f"; CPU ms per request (user+system): {spent}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=6.0, help="per phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--checkout", action="append", type=Path, help="a checkout with Deposito in its .venv")
    a = ap.parse_args()
    checkouts = a.checkout or [CHECKOUT]
    with scratch("deposito-small-cpu-") as (root, procs):
        clusters = [DepositoCluster(procs, root / f"c{i}", prefix=f"c{i}-", checkout=checkout)
                    for i, checkout in enumerate(checkouts)]
        for cluster in clusters:
            cluster.wait_up(3)
        for r in range(a.rounds):
            for checkout, cluster in zip(checkouts, clusters):
                counts, put = phase(cluster, a.clients, a.seconds, a.replicas, f"r{r}")
                _, get = phase(cluster, a.clients, a.seconds, a.replicas, f"r{r}", counts)
                print(f"round {r + 1}, {a.clients} clients, {checkout}:\n  {put}\n  {get}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
