"""What a small PUT and GET cost, and where a PUT waits: N clients (one
connection each, threads of this process) put 4 KiB files for a few
seconds, then get them back. Printed per phase: the rate, for PUTs the
median time to ``OK send`` and from the bytes to ``OK stored``, and the CPU
time (user and system) each process of the cluster spent per request.

With ``--s3``, the clients are boto3's, through the proxy's S3 API
(PutObject and GetObject; the time to ``OK send`` is then not known, and the
figure given is the whole request's). The CPU of this process, the
clients', is given too.

With ``--postgres URL`` (a PostgreSQL server, as
``examples/private_postgres.py`` prints it), each proxy keeps its catalog in
a new database there, and the CPU of PostgreSQL's processes is given too.

With ``--checkout`` given more than once, each checkout's installed
Deposito (its .venv) runs a cluster of its own, in turns round by round,
so that two versions are compared in one run on the same machine.

Run by hand: ``.venv/bin/python bench/small_cpu.py [--clients 16]
[--seconds 6] [--rounds 3] [--replicas 2] [--s3] [--postgres URL] [--overwrite]
[--checkout DIR ...]``.
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
from proxies import database  # noqa: E402
from harness import CHECKOUT, HOST, DepositoClient, DepositoCluster, free_port, scratch  # noqa: E402
from s3 import ACCESS, BUCKET, SECRET, wait_s3  # noqa: E402
from s3 import client as s3_client  # noqa: E402

SIZE = 4096


def phase(cluster: DepositoCluster, clients: int, seconds: float, replicas: int, tag: str,
          counts: list[int] | None = None, s3_port: int | None = None, postgres: bool = False
          ) -> tuple[list[int], str]:
    """PUT new files for ``seconds`` (``counts`` None), or GET the files each
    client put (``counts``, per client); returns the count per client and a
    line of figures. With ``s3_port``, through S3 (the bucket ``bench``);
    ``postgres``: the CPU of PostgreSQL's processes is counted too."""
    data = os.urandom(SIZE)
    done = [0] * clients
    to_send: list[float] = []
    to_stored: list[float] = []
    errors: list[BaseException] = []
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        if s3_port is not None:
            return s3_work(i)
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

    def s3_work(i: int) -> None:
        try:
            c = s3_client(s3_port)
            n = 0
            while time.monotonic() < stop:
                if counts is None:
                    t0 = time.perf_counter()
                    c.put_object(Bucket=BUCKET, Key=f"{tag}/{i}/{n}", Body=data,
                                 Metadata={"replicas": str(replicas)})
                    to_stored.append(time.perf_counter() - t0)
                else:
                    got = c.get_object(Bucket=BUCKET, Key=f"{tag}/{i}/{n % max(1, counts[i])}")["Body"].read()
                    assert len(got) == SIZE
                n += 1
            done[i] = n
        except BaseException as e:
            errors.append(e)

    pids: dict[str, int | list[int]] = dict(cluster.pids())
    if postgres:
        pids["postgres"] = [int(p) for p in os.listdir("/proc") if p.isdigit() and comm(int(p)) == "postgres"]
    mine = os.times()
    before = {k: cpu_of(p) for k, p in pids.items()}
    start = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if errors:
        raise errors[0]
    after = {k: cpu_of(p) for k, p in pids.items()}
    if s3_port is not None:
        now = os.times()
        before["clients"], after["clients"] = (mine.user, mine.system), (now.user, now.system)
    n = sum(done)
    spent = ", ".join(f"{k} {(after[k][0] - before[k][0]) / n * 1e3:.2f}"
                      f"+{(after[k][1] - before[k][1]) / n * 1e3:.2f}" for k in after)
    line = f"{'PUT' if counts is None else 'GET'} {n / elapsed:,.0f}/s"
    if counts is None and s3_port is not None:
        line += f"; PutObject {statistics.median(to_stored) * 1e3:.2f} ms"
    elif counts is None:
        line += (f"; to OK send {statistics.median(to_send) * 1e3:.2f} ms,"
                 f" bytes to OK stored {statistics.median(to_stored) * 1e3:.2f} ms")
    return done, line + f"; CPU ms per request (user+system): {spent}"


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_of(pids: int | list[int]) -> tuple[float, float]:
    """(user, system) seconds of a process, or of processes (those still running)."""
    if isinstance(pids, int):
        return cpu(pids)
    spent = [0.0, 0.0]
    for pid in pids:
        try:
            user, system = cpu(pid)
        except OSError:
            continue
        spent[0] += user
        spent[1] += system
    return spent[0], spent[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=6.0, help="per phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--s3", action="store_true", help="through the S3 API, with boto3")
    ap.add_argument("--postgres", metavar="URL", help="keep each proxy's catalog in a new database on this server")
    ap.add_argument("--overwrite", action="store_true",
                    help="every round puts the first round's names again: from the second round on each PUT"
                         " replaces a version, whose copies are garbage to delete (as in bench/s3.py's rounds)")
    ap.add_argument("--checkout", action="append", type=Path, help="a checkout with Deposito in its .venv")
    a = ap.parse_args()
    checkouts = [c.resolve() for c in a.checkout] if a.checkout else [CHECKOUT]
    with scratch("deposito-small-cpu-") as (root, procs):
        clusters, s3_ports = [], []
        for i, checkout in enumerate(checkouts):
            s3_ports.append(free_port() if a.s3 else None)
            keys = root / "s3-keys"
            keys.write_text(f"{ACCESS} {SECRET}\n")
            extra = ["--s3", f"tcp:{s3_ports[-1]}:interface={HOST}", "--s3-keys", keys] if a.s3 else []
            if a.postgres:
                extra += ["--catalog", database(a.postgres, f"small_cpu_{os.getpid()}_{i}")]
            clusters.append(DepositoCluster(procs, root / f"c{i}", prefix=f"c{i}-", checkout=checkout,
                                            proxy_args=extra))
        for cluster, s3_port in zip(clusters, s3_ports):
            cluster.wait_up(3)
            if s3_port is not None:
                wait_s3(s3_port)
                s3_client(s3_port).create_bucket(Bucket=BUCKET)
        for r in range(a.rounds):
            for checkout, cluster, s3_port in zip(checkouts, clusters, s3_ports):
                pg = bool(a.postgres)
                tag = "r0" if a.overwrite else f"r{r}"
                counts, put = phase(cluster, a.clients, a.seconds, a.replicas, tag, s3_port=s3_port, postgres=pg)
                _, get = phase(cluster, a.clients, a.seconds, a.replicas, tag, counts, s3_port, pg)
                print(f"round {r + 1}, {a.clients} clients, {checkout}:\n  {put}\n  {get}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
