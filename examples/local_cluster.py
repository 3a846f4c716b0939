"""Start a local Deposito cluster: a proxy and three storage servers.

Each is a real ``twistd`` process on loopback with its data under ``--var``
(default ./var). Ctrl-C stops them all.

    python examples/local_cluster.py [--var DIR] [--port 7000] [--servers 3] [--http 7080] [--s3 7090]

With ``--s3`` the proxy also serves the S3 API, with a key pair made once
in ``DIR/s3-keys`` (readable by its owner alone) and kept for the next run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from local_processes import AWS, DEPOSITO, LocalProcesses, server_args, uninterrupted

from deposito.s3.keys import S3Keys, new_key_pair


def s3_key_file(var: Path) -> tuple[Path, str, str]:
    """``var/s3-keys``, made with a new key pair the first time (mode 0600:
    it holds a secret) and reused afterwards; its path, and its first access
    key ID and secret, the ones printed for the aws CLI."""
    path = var / "s3-keys"
    if not path.exists():
        key_id, secret = new_key_pair()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# S3 keys of make run's proxy (--s3-keys): <access-key-id> <secret-access-key>\n")
            f.write(f"{key_id} {secret}\n")
    os.chmod(path, 0o600)
    S3Keys.from_file(str(path))  # a file edited by hand is checked here, with its line named
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key_id, secret = line.split()
            return path, key_id, secret
    raise AssertionError("unreachable: S3Keys.from_file refuses a file without a key")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--var", default="var", help="folder for data, logs and pidfiles")
    parser.add_argument("--port", type=int, default=7000, help="client port of the proxy")
    parser.add_argument("--cluster-port", type=int, default=7001, help="port where servers join")
    parser.add_argument("--servers", type=int, default=3, help="how many storage servers")
    parser.add_argument("--http", type=int, default=None,
                        help="port of the status page, metrics, JSON API and downloads (off unless given)")
    parser.add_argument("--s3", type=int, default=None, help="port of the S3 API (off unless given)")
    args = parser.parse_args()

    var = Path(args.var).resolve()
    procs = LocalProcesses(var)
    procs.check_free({"--port": args.port, "--cluster-port": args.cluster_port,
                      **({"--http": args.http} if args.http else {}), **({"--s3": args.s3} if args.s3 else {})})
    try:
        s3_args: list[str] = []
        if args.s3:
            keys, key_id, secret = s3_key_file(var)
            s3_args = ["--s3", f"tcp:{args.s3}:interface=127.0.0.1", "--s3-keys", str(keys)]
        procs.start("proxy", [
            "deposito-proxy", "--port", f"tcp:{args.port}:interface=127.0.0.1",
            "--cluster-port", f"tcp:{args.cluster_port}:interface=127.0.0.1", "--data", str(var / "proxy")]
            + (["--http", f"tcp:{args.http}:interface=127.0.0.1"] if args.http else []) + s3_args)
        for i in range(1, args.servers + 1):
            procs.start(f"server{i}", server_args(var, i, [args.cluster_port]))
        dead = (procs.wait_for_ports([args.port] + ([args.s3] if args.s3 else []))
                or procs.wait_for_servers([args.port], args.servers))
        if dead:
            print(f"could not start: {', '.join(dead)}; see the logs in {var}", file=sys.stderr)
            return 1
        print(f"Deposito is running: a proxy on 127.0.0.1:{args.port} and {args.servers} storage servers.")
        print(f"  data and logs:  {var}")
        print(f"  connect:        telnet 127.0.0.1 {args.port}   (or: nc 127.0.0.1 {args.port})")
        if args.http:
            print(f"  status page:    http://127.0.0.1:{args.http}/   (metrics: http://127.0.0.1:{args.http}/metrics)")
        proxy = "" if args.port == 7000 else f" --proxy 127.0.0.1:{args.port}"  # (the CLI's default: 7000)
        print(f"  command line:   {DEPOSITO}{proxy} put FILE --replicas 3")
        if args.s3:
            endpoint = f"http://127.0.0.1:{args.s3}"
            print(f"  S3 API:         {endpoint}   (key in {keys}); with the aws CLI:")
            print(f"    export AWS_ACCESS_KEY_ID={key_id} AWS_SECRET_ACCESS_KEY={secret} AWS_DEFAULT_REGION=us-east-1")
            print(f"    {AWS} --endpoint-url {endpoint} s3 mb s3://photos")
            print(f"    {AWS} --endpoint-url {endpoint} s3 cp FILE s3://photos/ --metadata replicas=3")
            print(f"    {AWS} --endpoint-url {endpoint} s3 ls s3://photos/")
        print("Ctrl-C stops the cluster.", flush=True)
        return procs.serve()
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    finally:
        uninterrupted(procs.stop)


if __name__ == "__main__":
    sys.exit(main())
