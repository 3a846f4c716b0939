"""Where a GET's time goes: a file of one size (1 MiB unless told) read
through the proxy, read straight from the storage server that holds it (the
blob port's READ, what the proxy asks), and read from SeaweedFS's volume
server, each with a fresh connection opened before the clock starts. For
Deposito, the time to the reply line is printed beside the time to the last
byte.

Run by hand: ``.venv/bin/python bench/get_path.py [--size 1048576] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import HOST, DepositoCluster, make_file, scratch  # noqa: E402
from run import DepositoSystem, SeaweedCluster, SeaweedSystem  # noqa: E402

FILES = 40


def timed_read(port: int, request: str, size: int, buf: bytearray, banner: bool) -> tuple[float, float]:
    """(seconds to the reply line, seconds to the last byte) of one request."""
    with socket.create_connection((HOST, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb", buffering=0)
        if banner:
            f.readline()
        start = time.perf_counter()
        s.sendall(request.encode() + b"\r\n")
        line = b""
        while not line.endswith(b"\n"):
            line += s.recv(1)
        if not line.startswith(b"OK"):
            raise RuntimeError(f"{request}: {line!r}")
        first = time.perf_counter() - start
        view, got = memoryview(buf), 0
        while got < size:
            n = s.recv_into(view, min(len(buf), size - got))
            if not n:
                raise RuntimeError(f"{request}: closed after {got} bytes")
            got += n
        return first, time.perf_counter() - start


def p50(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:.3f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1 << 20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    buf = bytearray(1 << 20)
    with scratch("deposito-get-path-") as (root, procs):
        src = root / "src"
        sha = make_file(src, a.size)
        cluster = DepositoCluster(procs, root / "deposito")
        deposito = DepositoSystem(cluster)
        names = [deposito.put(f"get-path/{i}", src, a.size, 1, sha)[1] for i in range(FILES)]
        ports = {row[0]: int(row[1].rsplit(":", 1)[1]) for row in cluster.servers()}
        blobs = [(path.name, ports[path.parts[-4]]) for path in (root / "deposito").glob("*/blobs/*/*")
                 if path.parts[-4] in ports and len(path.name) == 32]
        seaweed = SeaweedSystem(SeaweedCluster(procs, root / "seaweedfs", a.size), fsync=True)
        handles = [seaweed.put(f"get-path/{i}", src, a.size, 1, sha)[1] for i in range(FILES)]
        print(f"GET of {a.size} bytes, one copy, p50 of {5 * FILES} reads per line")
        cells: list[tuple[str, Callable[[int], tuple[float, float]]]] = [
            ("Deposito, through the proxy",
             lambda i: timed_read(cluster.port, f"GET {names[i % FILES]}", a.size, buf, banner=True)),
            ("Deposito, READ from its server",
             lambda i: timed_read(blobs[i % len(blobs)][1], f"READ {blobs[i % len(blobs)][0]} 0 {a.size}",
                                  a.size, buf, banner=False))]
        for _ in range(a.rounds):
            for label, read in cells:
                firsts, totals = zip(*(read(i) for i in range(5 * FILES)))
                print(f"  {label:34} reply line {p50(list(firsts))}, last byte {p50(list(totals))}")
            seaweed_totals = [seaweed.get(handles[i % FILES], a.size) for i in range(5 * FILES)]
            print(f"  {'SeaweedFS, from its volume server':34} last byte {p50(seaweed_totals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
