"""Start a local Deposito cluster: a proxy and three storage servers.

Each is a real ``twistd`` process on loopback with its data under ``--var``
(default ./var). Ctrl-C stops them all.

    python examples/local_cluster.py [--var DIR] [--port 7000] [--servers 3] [--http 7080]
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TWISTD = str(Path(sys.executable).with_name("twistd"))


def twistd(var: Path, name: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [TWISTD, "-n", "--pidfile", str(var / f"{name}.pid"), "--logfile", str(var / f"{name}.log")] + args,
        cwd=var)


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
    var.mkdir(parents=True, exist_ok=True)
    for stale in var.glob("*.pid"):
        stale.unlink()
    procs = [twistd(var, "proxy", [
        "deposito-proxy", "--port", f"tcp:{args.port}:interface=127.0.0.1",
        "--cluster-port", f"tcp:{args.cluster_port}:interface=127.0.0.1", "--data", str(var / "proxy")]
        + (["--http", f"tcp:{args.http}:interface=127.0.0.1"] if args.http else []))]
    for i in range(1, args.servers + 1):
        d = var / f"server{i}"
        d.mkdir(exist_ok=True)
        procs.append(twistd(var, f"server{i}", [
            "deposito-server", "--proxy", f"tcp:127.0.0.1:{args.cluster_port}",
            "--port", "tcp:0:interface=127.0.0.1", "--data", str(d), "--name", f"server{i}",
            "--zone", f"zone{i}"]))

    def stop(*_: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGTERM, lambda *a: (stop(), sys.exit(0)))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, also when started with SIGINT ignored
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", args.port), 1).close()
            break
        except OSError:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.2)
    dead = [p.args[p.args.index("-n") + 5] for p in procs if p.poll() is not None]
    if dead:
        print(f"could not start: {', '.join(dead)}; see the logs in {var}", file=sys.stderr)
        stop()
        return 1
    print(f"Deposito is running: a proxy on 127.0.0.1:{args.port} and {args.servers} storage servers.")
    print(f"  data and logs:  {var}")
    print(f"  connect:        telnet 127.0.0.1 {args.port}   (or: nc 127.0.0.1 {args.port})")
    if args.http:
        print(f"  status page:    http://127.0.0.1:{args.http}/   (metrics: http://127.0.0.1:{args.http}/metrics)")
    print(f"  command line:   {Path(sys.executable).with_name('deposito')} put FILE --replicas 3")
    print("Ctrl-C stops the cluster.", flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a process stopped; stopping the rest (see the logs)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
