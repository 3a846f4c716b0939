"""A GET whose serving copy is lost (kill -9) at a random moment goes on from
the other copy at the same offset: every byte right, the connection never cut.

On each read path: relayed by the proxy (``--no-handoff``) and handed off
(the server on the proxy's host writes into the reader's socket itself, see
deposito.protocols.handoff), through the text protocol and HTTP alike.
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
from dataclasses import dataclass

import pytest

from deposito.placement import read_order
from deposito.roster import Member
from tests.cluster import Cluster, free_port, poll, serving_servers, sha

pytestmark = pytest.mark.slow

SERVERS = 4
FILES = 6
ROUNDS = 20


@dataclass
class Stored:
    data: bytes
    serving: str  # the holder read first while both are up
    other: str


def put_files(cluster: Cluster, rng: random.Random) -> dict[str, Stored]:
    """Files of 2 to 8 MiB with 2 copies each, spread over the servers."""
    files = {}
    with cluster.wire() as w:
        for i in range(FILES):
            data = rng.randbytes(rng.randrange(2 << 20, 8 << 20))
            name = f"f{i}"
            assert w.put(name, data, 2).startswith("OK stored")
            holders = cluster.holders(data)
            assert len(holders) == 2
            [blob] = {p.name for p in cluster.blob_files(holders[0]) if sha(p.read_bytes()) == sha(data)}
            first, other = read_order(blob, [Member(id=h, zone="", host="", port=0) for h in holders])
            files[name] = Stored(data, first.id, other.id)
    return files


def restart(cluster: Cluster, sid: str) -> None:
    """Start a killed server again; it joins in the background."""
    cluster.start_server(sid)


def pick(cluster: Cluster, files: dict[str, Stored], rng: random.Random) -> str:
    """A file both of whose holders are up."""

    def ready() -> list[str]:
        up = set(cluster.up())
        return [n for n, f in files.items() if f.serving in up and f.other in up]

    names = poll(ready, 30, 0.05)
    assert names, "no file with both holders up"
    return rng.choice(names)


def failovers(cluster: Cluster) -> int:
    return cluster.log("proxy").count(" failed at ")


def kill_rounds(cluster: Cluster, seed: int) -> None:
    """ROUNDS GETs, each with its serving holder killed at a random moment:
    before the reply, right after it, or after a random part of the body."""
    rng = random.Random(seed)
    files = put_files(cluster, rng)
    for r in range(ROUNDS):
        name = pick(cluster, files, rng)
        f = files[name]
        size = len(f.data)
        moment = rng.choice(["request", "reply", "body"])
        with cluster.wire() as w:
            w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            w.send(f"GET {name}\n".encode())
            first = b""
            if moment == "request":
                cluster.kill(f.serving)
            head = w.line()
            assert head.startswith(f"OK {size} "), (seed, r, moment, head)
            if moment == "reply":
                cluster.kill(f.serving)
            elif moment == "body":
                first = w.exact(rng.randrange(1, size))
                cluster.kill(f.serving)
            rest = w.exact(size - len(first))
            assert sha(first + rest) == sha(f.data), (seed, r, moment, len(first))
            assert w.cmd(f"STAT {name}").startswith("OK name="), (seed, r, moment)  # not cut: reads lines again
        restart(cluster, f.serving)
    assert "broke mid-stream" not in cluster.log("proxy")


@pytest.mark.parametrize("handoff", [True, False], ids=["handed-off", "relayed"])
def test_a_get_whose_serving_holder_is_killed_at_random_moments_is_whole(tmp_path, handoff):
    cluster = Cluster(tmp_path, server_args=() if handoff else ("--no-handoff",)).start(SERVERS)
    try:
        before = failovers(cluster)
        kill_rounds(cluster, seed=int.from_bytes(os.urandom(4), "big"))
        went_on = failovers(cluster) - before
        log = cluster.log("proxy")
        assert ("writes GETs into readers' sockets itself" in log) == handoff
        assert went_on >= ROUNDS // 4, f"only {went_on} of {ROUNDS} GETs went on from the other copy"
    finally:
        cluster.stop()


@pytest.mark.parametrize("handoff", [True, False], ids=["handed-off", "relayed"])
def test_an_http_get_goes_on_from_the_other_copy(tmp_path, handoff):
    """An HTTP download, whole or from an offset, takes the same paths as a
    text GET; its serving holder killed before the request or mid-body."""
    port = free_port()
    cluster = Cluster(tmp_path, proxy_args=("--http", f"tcp:{port}:interface=127.0.0.1"),
                      server_args=() if handoff else ("--no-handoff",)).start(SERVERS)
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    try:
        files = put_files(cluster, rng)
        for r in range(6):
            name = pick(cluster, files, rng)
            f = files[name]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.connect()
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            start = rng.randrange(0, len(f.data) // 2) if r % 2 else 0
            if r % 3 == 0:
                cluster.kill(f.serving)
            conn.request("GET", f"/files/{name}", headers={"Range": f"bytes={start}-"} if start else {})
            response = conn.getresponse()
            assert response.status == (206 if start else 200)
            first = response.read(rng.randrange(1, len(f.data) - start))
            if r % 3:
                cluster.kill(f.serving)
            rest = response.read()
            conn.request("GET", "/api/status")  # the connection serves on
            assert conn.getresponse().status == 200
            conn.close()
            assert sha(first + rest) == sha(f.data[start:]), (r, start, len(first))
            restart(cluster, f.serving)
        assert "broke mid-stream" not in cluster.log("proxy")
    finally:
        cluster.stop()


def test_a_handed_off_get_goes_on_when_its_server_taken_for_down_turns_out_dead(tmp_path):
    """The proxy may learn that a server is down before it sees the server's
    hand-off connection close. Frozen (SIGSTOP) mid-blob, the server is taken
    for down; killed then, within the grace the proxy gives it, its socket
    closes by the kernel's doing: the other copy goes on, every byte right."""
    cluster = Cluster(tmp_path).start(2)
    try:
        data = os.urandom(32 << 20)
        with cluster.wire() as w:
            assert w.put("thaw", data, 2).startswith("OK stored")
        with cluster.wire() as w:
            w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            assert w.cmd("GET thaw").startswith(f"OK {len(data)} ")
            first = w.exact(1 << 20)
            serving = poll(lambda: serving_servers(cluster), 5)
            assert len(serving) == 1
            victim = serving[0]
            cluster.servers[victim].send_signal(signal.SIGSTOP)
            assert poll(lambda: cluster.states()[victim] == "down", 20, 0.02)
            cluster.kill(victim)
            rest = w.exact(len(data) - len(first))
            assert sha(first + rest) == sha(data)
            assert w.cmd("STAT thaw").startswith("OK name=")
        log = cluster.log("proxy")
        assert "writes GETs into readers' sockets itself" in log
        assert f"from {victim} failed at" in log and "broke mid-stream" not in log
    finally:
        cluster.stop()
