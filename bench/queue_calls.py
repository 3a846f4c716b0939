"""The reconciler's catalog calls for a dead server's files, alone, on
SQLite or on a private PostgreSQL (default settings): a catalog of --files
files with two copies each, one on server s0, written straight into it;
then s0's copies queued a page at a time (as the reconciler does when s0
is declared dead), each queued file claimed, read and settled as waiting
for a server (pages of 500), all woken, and each claimed, read and settled
as done. The time of each phase, per file.

    .venv/bin/python bench/queue_calls.py [--files 50000] [--postgres]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deposito.catalog import WAITING, Catalog, Outcome  # noqa: E402
from deposito.reconciler import PAGE, SERVER_PAGE  # noqa: E402
from examples.private_postgres import PrivatePostgres  # noqa: E402
from tests.cluster import free_port  # noqa: E402

FILL_PAGE = 10_000


def fill(cat: Catalog, files: int) -> None:
    db = cat.db
    db.execute("BEGIN")
    for low in range(0, files, FILL_PAGE):
        numbers = range(low, min(files, low + FILL_PAGE))
        db.executemany("INSERT INTO files (name, version, blob, size, sha256, replicas, created, servers)"
                       " VALUES (?, 1, ?, 1024, ?, 2, 0, ?)",
                       [(f"f/{i:08d}", f"{i:032x}", "0" * 64, f"s0 s{1 + i % 2}") for i in numbers])
        db.executemany("INSERT INTO copies (blob, server) VALUES (?, ?)",
                       [(f"{i:032x}", s) for i in numbers for s in ("s0", f"s{1 + i % 2}")])
        db.executemany("INSERT INTO names (name, last_version) VALUES (?, 1)", [(f"f/{i:08d}",) for i in numbers])
    db.execute("COMMIT")


def look_at_all(cat: Catalog, due: float | None) -> int:
    """Claim, read and settle every queued file due, a page at a time."""
    looked = 0
    while True:
        page = cat.due_work(time.time(), PAGE)
        cat.records([name for name, _, _ in page])
        cat.settle([Outcome(name, gen, due, 1000 if due else 0, 2, 1, 1) for name, gen, _ in page])
        looked += len(page)
        if len(page) < PAGE:
            return looked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--postgres", action="store_true", help="the catalog in a private PostgreSQL, not SQLite")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="deposito-queue-"))
    pg = PrivatePostgres(folder, free_port()) if args.postgres else None  # (it gives the folder to its user)
    try:
        if pg is not None:
            from deposito.catalog.postgres import PostgresBackend

            cat = Catalog(PostgresBackend(pg.start()), proxy="p1")
        else:
            cat = Catalog(str(folder), proxy="p1")
        fill(cat, args.files)
        if pg is not None:
            cat.db.execute("ANALYZE")

        def queue_s0() -> int:
            after: str | None = ""
            while after is not None:
                after = cat.enqueue_server("s0", after, SERVER_PAGE)
            return cat.counts().queued

        print(f"{'PostgreSQL' if pg else 'SQLite'}, {args.files:,} files, s0 holding each:")
        for phase, call in (("queued", queue_s0), ("looked at, waiting", lambda: look_at_all(cat, WAITING)),
                            ("woken", lambda: cat.wake(time.time())), ("looked at, done", lambda: look_at_all(cat, None))):
            began = time.perf_counter()
            files = call()
            took = time.perf_counter() - began
            print(f"  {phase}: {files:,} files in {took:.2f} s, {took / args.files * 1e6:.0f} us a file")
        cat.close()
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
