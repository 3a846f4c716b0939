"""A storage server holding many small blobs: its start, its memory, and the
time from its join until a real proxy has reconciled its whole inventory.

Run by hand: ``.venv/bin/python bench/inventory.py [--blobs 500000] [--root DIR]``.
The blobs are written straight in the store's on-disk format (metadata in
the blob file's extended attribute, no fsync), and the proxy's catalog is
filled straight with SQLite so that it lists every one of them, plus one
copy the server does not hold: the proxy logs the listing's summary (one
copy missing) once the last chunk is reconciled.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deposito.blobmeta import BlobMeta, BlockSums  # noqa: E402
from deposito.blobstore import META_ATTR, BlobStore  # noqa: E402
from deposito.catalog import Catalog  # noqa: E402
from tests.cluster import Cluster, sha  # noqa: E402

SERVER = "big"


def make_blobs(root: Path, count: int) -> list[tuple[str, str, int, str]]:
    """``count`` blobs of a few bytes under ``root``: (blob, name, size, sha256) of each."""
    blobs = root / "blobs"
    made = []
    for sub in range(256):
        (blobs / f"{sub:02x}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        blob = os.urandom(16).hex()
        data = b"blob %d" % i
        sums = BlockSums()
        sums.update(data)
        meta = BlobMeta(blob, f"bench/{i:07d}", 1, len(data), sha(data), 1, sums.blocks)
        fd = os.open(blobs / blob[:2] / blob, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.setxattr(fd, META_ATTR, meta.to_json())
        finally:
            os.close(fd)
        made.append((blob, meta.name, meta.size, meta.sha256))
    (root / "node-id").write_text(SERVER + "\n")
    return made


def fill_catalog(directory: Path, blobs: list[tuple[str, str, int, str]]) -> None:
    Catalog(str(directory)).close()  # the schema
    db = sqlite3.connect(directory / "catalog.sqlite", isolation_level=None)
    db.execute("BEGIN")
    db.executemany("INSERT INTO names (name, last_version, settled) VALUES (?, 1, 1)",
                   ((name,) for _, name, _, _ in blobs))
    db.executemany("INSERT INTO files (name, version, blob, size, sha256, replicas, created, servers) VALUES (?, 1, ?, ?, ?, 1, 0, ?)",
                   ((name, blob, size, digest, SERVER) for blob, name, size, digest in blobs))
    db.executemany("INSERT INTO copies VALUES (?, ?, 0)", ((blob, SERVER) for blob, _, _, _ in blobs))
    db.execute("COMMIT")
    db.close()


def list_one_absent_copy(directory: Path) -> None:
    """A copy the catalog lists and the server lacks: the listing's summary
    says it is missing, once the last chunk is reconciled."""
    absent = "f" * 32
    db = sqlite3.connect(directory / "catalog.sqlite", isolation_level=None)
    db.execute("INSERT OR IGNORE INTO names (name, last_version, settled) VALUES ('bench/absent', 1, 1)")
    db.execute("INSERT OR IGNORE INTO files VALUES ('bench/absent', 1, ?, 1, ?, 1, 0, ?)",
               (absent, "0" * 64, SERVER))
    db.execute("INSERT OR IGNORE INTO copies VALUES (?, ?, 0)", (absent, SERVER))
    db.close()


def start_proxy(cluster: Cluster, planning: bool) -> None:
    """The cluster's proxy; without ``planning``, a real proxy whose
    reconciler never plans (it reads the whole catalog to plan, which would
    be measured instead of the inventory)."""
    if planning:
        cluster.start_proxy()
        return
    launcher = ("import sys; from deposito.reconciler import Reconciler; Reconciler.kick = lambda self: None;"
                " from twisted.scripts.twistd import run; run()")

    def without_planning(name: str, args: list[str]) -> subprocess.Popen:
        """Cluster.twistd's command, run by a Python that first switches planning off."""
        return subprocess.Popen(
            [sys.executable, "-c", launcher, "-n", "--pidfile", str(cluster.root / f"{name}.pid"),
             "--logfile", str(cluster.root / f"{name}.log")] + args,
            cwd=cluster.root, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    cluster.twistd = without_planning  # type: ignore[method-assign]
    try:
        cluster.start_proxy()
    finally:
        del cluster.twistd


def status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blobs", type=int, default=500_000)
    parser.add_argument("--root", default=None,
                        help="a folder for the data, kept and used again by the next run (default: a temp folder)")
    parser.add_argument("--no-planning", action="store_true",
                        help="switch off the proxy reconciler's planning (which reads the whole catalog)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="deposito-inventory-"))
    try:
        if not (root / "proxy" / "catalog.sqlite").exists():
            t = time.monotonic()
            blobs = make_blobs(root / SERVER, args.blobs)
            print(f"wrote {len(blobs)} blobs in {time.monotonic() - t:.1f} s")
            t = time.monotonic()
            fill_catalog(root / "proxy", blobs)
            print(f"filled the catalog in {time.monotonic() - t:.1f} s")
            del blobs
        list_one_absent_copy(root / "proxy")
        t = time.monotonic()
        store = BlobStore(str(root / SERVER))
        counted = time.monotonic() - t
        t = time.monotonic()
        read = sum(1 for _ in store.inventory())
        print(f"in this process: BlobStore() counts {store.count} blobs in {counted:.2f} s;"
              f" reading all {read} blobs' metadata (what it did before) takes {time.monotonic() - t:.2f} s")

        cluster = Cluster(root)
        start_proxy(cluster, not args.no_planning)
        try:
            started = time.monotonic()
            cluster.start_server(SERVER)
            proc = cluster.servers[SERVER]
            marks: dict[str, float] = {}
            peak_rss = 0
            patterns = {"start": (SERVER, r"storage server big holds"), "join": (SERVER, r"joined the proxy"),
                        "reconciled": ("proxy", r"inventory of big: 1 copies missing")}
            while len(marks) < len(patterns) and time.monotonic() - started < 600:
                for key, (log, pattern) in patterns.items():
                    if key not in marks and re.search(pattern, cluster.log(log)):
                        marks[key] = time.monotonic() - started
                if proc.poll() is None:
                    peak_rss = max(peak_rss, status(proc.pid)["VmRSS"])
                time.sleep(0.05)
            final = status(proc.pid)
            print(f"server started (store counted) after {marks.get('start', float('nan')):.2f} s,"
                  f" joined after {marks.get('join', float('nan')):.2f} s")
            print(f"whole inventory reconciled {marks.get('reconciled', float('nan')) - marks.get('join', 0):.2f} s"
                  f" after the join ({marks.get('reconciled', float('nan')):.2f} s after the start)")
            print(f"server RSS: peak {final['VmHWM']} MiB (VmHWM), {final['VmRSS']} MiB at the end,"
                  f" highest sampled {peak_rss} MiB")
            print(re.findall(r".*inventory of big.*", cluster.log("proxy")))
        finally:
            cluster.stop()
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
