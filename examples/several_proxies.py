"""Start Deposito with several proxies: a private PostgreSQL holding the
catalog, two proxies sharing it, and three storage servers joined to both.

Each proxy and server is a real ``twistd`` process on loopback; PostgreSQL
is examples/private_postgres.py's. Data, logs and pidfiles go under
``--var`` (default ./var/proxies). A process that stops (a proxy killed to
see the clients go on with another) is reported and the rest go on. Ctrl-C
(or SIGTERM) stops them all, PostgreSQL last; the data stays for the next
start.

    python examples/several_proxies.py [--var DIR] [--proxies 2] [--port 7000] [--http 7080]

The first proxy takes ``--port`` (clients), ``--cluster-port`` (servers)
and ``--http`` (status page, off unless given); each next proxy the same
ports plus 100.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from local_processes import DEPOSITO, LocalProcesses, server_args, uninterrupted
from private_postgres import PrivatePostgres

STEP = 100  # between one proxy's ports and the next one's


def proxy_args(var: Path, n: int, catalog: str, port: int, cluster_port: int, http: int | None) -> list[str]:
    """Proxy ``proxy<n>`` (from 1) on the catalog ``catalog``, on the ports
    given for the first proxy plus ``STEP`` for each before it."""
    shift = (n - 1) * STEP
    args = ["deposito-proxy", "--catalog", catalog, "--data", str(var / f"proxy{n}"),
            "--port", f"tcp:{port + shift}:interface=127.0.0.1",
            "--cluster-port", f"tcp:{cluster_port + shift}:interface=127.0.0.1"]
    if http:
        args += ["--http", f"tcp:{http + shift}:interface=127.0.0.1"]
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--var", default="var/proxies", help="folder for data, logs and pidfiles")
    parser.add_argument("--proxies", type=int, default=2, help="how many proxies share the catalog")
    parser.add_argument("--port", type=int, default=7000, help="client port of the first proxy")
    parser.add_argument("--cluster-port", type=int, default=7001, help="port where servers join the first proxy")
    parser.add_argument("--http", type=int, default=None, help="status page port of the first proxy (off unless given)")
    parser.add_argument("--servers", type=int, default=3, help="how many storage servers")
    parser.add_argument("--postgres-port", type=int, default=5433, help="PostgreSQL's port on 127.0.0.1")
    args = parser.parse_args()
    if args.proxies < 1 or args.servers < 1:
        parser.error("--proxies and --servers take 1 or more")

    var = Path(args.var).resolve()
    procs = LocalProcesses(var)
    shifts = [(n - 1) * STEP for n in range(1, args.proxies + 1)]
    procs.check_free({**{f"--port (proxy{1 + s // STEP})": args.port + s for s in shifts},
                      **{f"--cluster-port (proxy{1 + s // STEP})": args.cluster_port + s for s in shifts},
                      **({f"--http (proxy{1 + s // STEP})": args.http + s for s in shifts} if args.http else {})})
    postgres: PrivatePostgres | None = None
    try:
        postgres = PrivatePostgres(var / "postgres", args.postgres_port)
        if (postgres.data / "postmaster.pid").exists():
            postgres.stop()  # left running by an earlier start that was killed
        catalog = postgres.start()
        numbers = range(1, args.proxies + 1)
        for n in numbers:
            procs.start(f"proxy{n}", proxy_args(var, n, catalog, args.port, args.cluster_port, args.http))
        clients = [args.port + (n - 1) * STEP for n in numbers]
        joins = [args.cluster_port + (n - 1) * STEP for n in numbers]
        for i in range(1, args.servers + 1):
            procs.start(f"server{i}", server_args(var, i, joins))
        dead = procs.wait_for_ports(clients) or procs.wait_for_servers(clients, args.servers)
        if dead:
            print(f"could not start: {', '.join(dead)}; see the logs in {var}", file=sys.stderr)
            return 1
        addresses = ",".join(f"127.0.0.1:{port}" for port in clients)
        print(f"Deposito is running: {args.proxies} proxies on one PostgreSQL catalog, "
              f"and {args.servers} storage servers joined to each.")
        print(f"  proxies:        {addresses.replace(',', '  ')}   (servers join on "
              f"{', '.join(map(str, joins))})")
        print(f"  catalog:        {catalog}")
        print(f"  data and logs:  {var}")
        if args.http:
            pages = "  ".join(f"http://127.0.0.1:{args.http + (n - 1) * STEP}/" for n in numbers)
            print(f"  status pages:   {pages}")
        print(f"  command line:   {DEPOSITO} --proxy {addresses} put FILE --replicas 3")
        print(f"                  (or: export DEPOSITO_PROXY={addresses})")
        print("Ctrl-C stops the proxies, the servers and PostgreSQL.", flush=True)
        return procs.serve(keep_going=True)
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"could not start PostgreSQL: {getattr(e, 'stderr', '') or e}", file=sys.stderr)
        return 1
    finally:
        uninterrupted(lambda: stop(procs, postgres))


def stop(procs: LocalProcesses, postgres: PrivatePostgres | None) -> None:
    """The proxies and servers first, so that the proxies hand their work
    over while the catalog is there; PostgreSQL then."""
    procs.stop()
    if postgres is not None:
        postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
