"""Start a local Deposito cluster: a proxy and three storage servers.

Each is a real ``twistd`` process on loopback with its data under ``--var``
(default ./var). Ctrl-C stops them all.

    python examples/local_cluster.py [--var DIR] [--port 7000] [--servers 3] [--http 7080]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from local_processes import DEPOSITO, LocalProcesses, server_args, uninterrupted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--var", default="var", help="folder for data, logs and pidfiles")
    parser.add_argument("--port", type=int, default=7000, help="client port of the proxy")
    parser.add_argument("--cluster-port", type=int, default=7001, help="port where servers join")
    parser.add_argument("--servers", type=int, default=3, help="how many storage servers")
    parser.add_argument("--http", type=int, default=None,
                        help="port of the status page, metrics, JSON API and downloads (off unless given)")
    args = parser.parse_args()

    var = Path(args.var).resolve()
    procs = LocalProcesses(var)
    try:
        procs.start("proxy", [
            "deposito-proxy", "--port", f"tcp:{args.port}:interface=127.0.0.1",
            "--cluster-port", f"tcp:{args.cluster_port}:interface=127.0.0.1", "--data", str(var / "proxy")]
            + (["--http", f"tcp:{args.http}:interface=127.0.0.1"] if args.http else []))
        for i in range(1, args.servers + 1):
            procs.start(f"server{i}", server_args(var, i, [args.cluster_port]))
        dead = procs.wait_for_ports([args.port])
        if dead:
            print(f"could not start: {', '.join(dead)}; see the logs in {var}", file=sys.stderr)
            return 1
        print(f"Deposito is running: a proxy on 127.0.0.1:{args.port} and {args.servers} storage servers.")
        print(f"  data and logs:  {var}")
        print(f"  connect:        telnet 127.0.0.1 {args.port}   (or: nc 127.0.0.1 {args.port})")
        if args.http:
            print(f"  status page:    http://127.0.0.1:{args.http}/   (metrics: http://127.0.0.1:{args.http}/metrics)")
        print(f"  command line:   {DEPOSITO} put FILE --replicas 3")
        print("Ctrl-C stops the cluster.", flush=True)
        return procs.serve()
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    finally:
        uninterrupted(procs.stop)


if __name__ == "__main__":
    sys.exit(main())
