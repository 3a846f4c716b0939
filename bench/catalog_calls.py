"""A PUT's catalog calls alone, timed on a private PostgreSQL (fsync on):
begin_upload, commit, and a client's lookup, each as the catalog thread
makes it (a batch of one call), over loopback TCP.

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
        for i in range(WARM_UP + args.calls):
            name, blob = f"f{i % 50}", uuid.uuid4().hex
            t0 = time.perf_counter()
            ((ok, version),) = cat.batch([(Catalog.begin_upload, (name, blob, ["s1", "s2"]))])
            t1 = time.perf_counter()
            ((ok2, newest),) = cat.batch([(Catalog.commit, (name, version, blob, 4096, "0" * 64, 2,
                                                            ["s1", "s2"], time.time()))])
            t2 = time.perf_counter()
            cat.lookups([name])
            t3 = time.perf_counter()
            assert ok and ok2 and newest, (version, newest)
            if i >= WARM_UP:
                spent["begin_upload"] += t1 - t0
                spent["commit"] += t2 - t1
                spent["lookup"] += t3 - t2
        cat.close()
        print("  ".join(f"{call} {total / args.calls * 1000:.3f} ms" for call, total in spent.items()))
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
