"""A PUT's catalog calls alone, timed on a private PostgreSQL (fsync on):
begin_upload, commit, and a client's lookup, each as the catalog thread
makes it (a batch of one call), over loopback TCP. For each, the time it
took and the CPU time this thread spent on it (psycopg's work per statement
is most of a call's cost on this side).

    .venv/bin/python bench/catalog_calls.py [--calls 600]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deposito.catalog import Catalog  # noqa: E402
from deposito.catalog.postgres import PostgresBackend  # noqa: E402
from examples.private_postgres import PrivatePostgres  # noqa: E402
from tests.cluster import free_port  # noqa: E402

WARM_UP = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=600, help="PUTs to time (after 100 to warm up)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="deposito-calls-"))
    pg = PrivatePostgres(folder, free_port())
    url = pg.start()
    try:
        cat = Catalog(PostgresBackend(url))
        spent = {"begin_upload": 0.0, "commit": 0.0, "lookup": 0.0}
        cpu = dict.fromkeys(spent, 0.0)
        for i in range(WARM_UP + args.calls):
            name, blob = f"f{i % 50}", uuid.uuid4().hex
            t0, c0 = time.perf_counter(), time.thread_time()
            ((ok, version),) = cat.batch([(Catalog.begin_upload, (name, blob, ["s1", "s2"]))])
            t1, c1 = time.perf_counter(), time.thread_time()
            ((ok2, newest),) = cat.batch([(Catalog.commit, (name, version, blob, 4096, "0" * 64, 2,
                                                            ["s1", "s2"], time.time()))])
            t2, c2 = time.perf_counter(), time.thread_time()
            cat.lookups([name])
            t3, c3 = time.perf_counter(), time.thread_time()
            assert ok and ok2 and newest, (version, newest)
            if i >= WARM_UP:
                for call, took, used in (("begin_upload", t1 - t0, c1 - c0), ("commit", t2 - t1, c2 - c1),
                                         ("lookup", t3 - t2, c3 - c2)):
                    spent[call] += took
                    cpu[call] += used
        cat.close()
        print("  ".join(f"{call} {total / args.calls * 1000:.3f} ms (CPU {cpu[call] / args.calls * 1000:.3f} ms)"
                        for call, total in spent.items()))
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
