"""Cost follows work, end to end: a server dies, and exactly its files are copied again."""

from __future__ import annotations

import re

import pytest

from tests.cluster import Cluster, fields, poll

pytestmark = pytest.mark.slow

FILES = 1000


def put_many(w, names: list[str], data: bytes, replicas: int) -> None:
    """PUTs sent a hundred at a time, each with its bytes right behind its line."""
    for i in range(0, len(names), 100):
        batch = names[i:i + 100]
        w.send(b"".join(f"PUT {n} {len(data)} {replicas}\n".encode() + data for n in batch))
        for n in batch:
            assert w.line().startswith("OK send"), n
            stored = w.line()
            assert stored.startswith("OK stored"), stored


def holders(w, names: list[str]) -> dict[str, set[str]]:
    out = {}
    for i in range(0, len(names), 200):
        batch = names[i:i + 200]
        w.send(b"".join(f"STAT {n}\n".encode() for n in batch))
        for n in batch:
            f = fields(w.line())
            out[n] = set(f["servers"].split(",")) - {"-"}
    return out


@pytest.fixture
def four(tmp_path):
    c = Cluster(tmp_path, proxy_args=("--dead-after", "2"))
    c.start(4)
    try:
        yield c
    finally:
        c.stop()


def test_a_dead_server_has_exactly_its_files_copied_again(four):
    names = [f"scale/f{i:05d}" for i in range(FILES)]
    with four.wire() as w:
        put_many(w, names, b"x" * 1024, 2)
        before = holders(w, names)
        on_s0 = {n for n, ids in before.items() if "s0" in ids}
        assert 0 < len(on_s0) < FILES
        four.kill("s0")
        assert poll(lambda: four.states()["s0"] == "dead", 15)

        def converged() -> bool:
            st = fields(w.cmd("STATUS"))
            return st["under"] == st["repairs_queued"] == st["repairs_running"] == "0"

        assert poll(converged, 120, 0.5)
        after = holders(w, names)
    for n in names:
        if n in on_s0:  # one new copy, on a live server, beside the one that was left
            assert len(after[n]) == 2 and "s0" not in after[n] and after[n] > (before[n] - {"s0"}), n
        else:
            assert after[n] == before[n], n
    copied = re.findall(r"made a copy of (\S+) on ", four.log("proxy"))
    assert sorted(copied) == sorted(on_s0)  # each of its files once, and nothing else


def test_overwrites_leave_on_disk_only_the_live_copies(shared_cluster):
    names = [f"scale/over{i:02d}" for i in range(40)]
    with shared_cluster.wire() as w:
        for round in range(10):
            put_many(w, names, b"%02d" % round * 512, 2)
    live = 2 * len(names)

    def on_disk() -> int:
        return sum(len(shared_cluster.blob_files(sid)) for sid in ("s0", "s1", "s2"))

    assert poll(lambda: on_disk() == live, 20), on_disk()
