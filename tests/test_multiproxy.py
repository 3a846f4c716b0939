"""Storage servers joined to two proxies at once (real processes).

Two proxies of one catalog (in PostgreSQL): every server joins, beats and
lists to each proxy on its own. Two proxies with catalogs of their own
(SQLite each): a server serves one and refuses the other, for good, until
a lost catalog is rebuilt from the servers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

import pytest

from tests.cluster import Cluster, fields, poll

pytestmark = pytest.mark.slow

SERVERS = {"s0": "up", "s1": "up", "s2": "up"}


def start(root, url: str) -> tuple[Cluster, Cluster]:
    a = Cluster(root, proxy_args=("--catalog", url))
    b = a.add_proxy("proxy-b")
    try:
        a.start_proxy()
        b.start_proxy()
        for i in range(3):
            a.start_server(f"s{i}")
        a.wait_up(3)
        b.wait_up(3)
    except BaseException:
        stop(a, b)
        raise
    return a, b


def stop(a: Cluster, b: Cluster) -> None:
    b.stop()
    a.stop()


@pytest.fixture
def proxies(tmp_path, postgres):
    """Two proxies on one catalog in PostgreSQL, and three servers joined to both."""
    url = postgres.database()
    a, b = start(tmp_path, url)
    try:
        yield a, b
    finally:
        stop(a, b)
        postgres.drop(url)


def test_each_proxy_sees_every_server_and_stores_through_them(proxies):
    a, b = proxies
    assert a.states() == b.states() == SERVERS
    files = {a: ("via/a", os.urandom(3 << 20)), b: ("via/b", os.urandom(1 << 20))}
    for proxy, (name, data) in files.items():
        with proxy.wire() as w:
            assert w.put(name, data, 2).startswith("OK stored")
        assert len(proxy.holders(data)) == 2  # on the servers' disks, bytes equal
    for proxy in (a, b):
        for name, data in files.values():
            with proxy.wire() as w:
                assert w.get(name)[1] == data
        assert "is on this host" in proxy.log(proxy.name)  # the server wrote into the reader's socket


def test_a_killed_proxy_stalls_nothing_and_is_joined_again_when_it_returns(proxies):
    a, b = proxies
    kept = os.urandom(1 << 20)
    with a.wire() as w:
        assert w.put("kept", kept).startswith("OK stored")
    a.kill_proxy(signal.SIGKILL)
    deadline = time.monotonic() + 7  # past the heartbeats a proxy may miss
    while time.monotonic() < deadline:
        assert b.states() == SERVERS
        time.sleep(0.5)
    assert all(p.poll() is None for p in a.servers.values())
    data = os.urandom(2 << 20)
    with b.wire() as w:
        assert w.put("while/a/is/gone", data).startswith("OK stored")
        assert w.get("while/a/is/gone")[1] == data
    assert len(b.holders(data)) == 2
    a.start_proxy()
    a.wait_up(3)
    assert a.states() == b.states() == SERVERS
    with a.wire() as w:
        assert w.get("kept")[1] == kept
        assert w.get("while/a/is/gone")[1] == data


def test_a_copy_deleted_on_a_disk_is_found_missing_in_the_servers_listing_and_made_again(proxies):
    """The server lists its blobs to each proxy when it joins again; the copy
    gone from its disk is found missing and made again, and both proxies
    serve the file."""
    a, b = proxies
    data = os.urandom(1 << 20)
    with a.wire() as w:
        assert w.put("counted/by/both", data, 2).startswith("OK stored")
    with b.wire() as w:
        assert w.stat("counted/by/both")["have"] == "2"
    time.sleep(6)  # copies this recent are not judged missing yet
    victim = a.holders(data)[0]
    a.kill(victim, signal.SIGTERM)
    [blob] = a.blob_files(victim)
    blob.unlink()
    a.start_server(victim)  # it joins both again and lists its blobs to each
    found = f"inventory of {victim}: 1 copies missing"
    assert poll(lambda: found in a.log(a.name) + b.log(b.name), 30)
    assert poll(lambda: len(a.holders(data)) == 2, 30)
    for proxy in (a, b):
        assert poll(lambda: have(proxy, "counted/by/both") == "2", 30), proxy.name
        with proxy.wire() as w:
            assert w.get("counted/by/both")[1] == data


def have(cluster: Cluster, name: str) -> str:
    with cluster.wire() as w:
        return w.stat(name)["have"]


def refusals(cluster: Cluster, sid: str) -> int:
    """How often the server refused a proxy for serving another catalog."""
    return len(re.findall(r"not joining the proxy at \S+: it serves catalog \S+ and this server serves catalog",
                          cluster.log(sid)))


def servers_up_down(cluster: Cluster) -> tuple[str, str]:
    with cluster.wire() as w:
        status = fields(w.cmd("STATUS"))
    return status["servers_up"], status["servers_down"]


def test_a_server_serves_one_catalog_refuses_another_and_switches_only_to_rebuild_a_lost_one(tmp_path):
    """Proxies A and B with catalogs of their own (SQLite each). Servers that
    served A, then told to join both, refuse B, also after a restart with A
    away; A's files stay on their disks however long B runs (B would take
    them for garbage). Once A and its catalog are gone, B started on a fresh
    catalog rebuilds it from the servers, which then serve B."""
    a = Cluster(tmp_path)
    b = a.add_proxy("proxy-b")
    servers = ("s0", "s1")
    try:
        a.start_proxy()
        b.start_proxy()
        assert poll(lambda: "no server holds blobs: the catalog starts empty" in b.log(b.name), 20)
        for sid in servers:
            a.start_server(sid, "--proxy", f"tcp:127.0.0.1:{a.cport}")
        a.wait_up(2)
        data = os.urandom(1 << 20)
        with a.wire() as w:
            assert w.put("on/a", data, 2).startswith("OK stored")

        # told to join both: B is refused
        for sid in servers:
            a.kill(sid, signal.SIGTERM)
            a.start_server(sid)
        a.wait_up(2)
        for sid in servers:
            assert poll(lambda: refusals(a, sid) > 0, 20), a.log(sid)[-3000:]
        deadline = time.monotonic() + 6  # past B's collection of garbage, were it shown A's blobs
        while time.monotonic() < deadline:
            assert servers_up_down(b) == ("0", "0")
            time.sleep(0.5)
        assert b.log(b.name).count("serves catalog") == len(servers)  # said once for each, however often it comes
        assert a.holders(data) == list(servers)

        # restarted while A is away, the servers still refuse B: the catalog they serve is on their disks
        a.kill_proxy()
        before = {sid: refusals(a, sid) for sid in servers}
        for sid in servers:
            a.kill(sid, signal.SIGTERM)
            a.start_server(sid)
        for sid in servers:
            assert poll(lambda: refusals(a, sid) > before[sid], 20), a.log(sid)[-3000:]
        assert servers_up_down(b) == ("0", "0")
        a.start_proxy()
        a.wait_up(2)
        with a.wire() as w:
            assert w.get("on/a")[1] == data
        assert a.holders(data) == list(servers)

        # A and its catalog lost: B, on a fresh catalog, rebuilds it from the servers
        a.kill_proxy()
        b.kill_proxy()
        shutil.rmtree(tmp_path / "proxy-b")
        b.start_proxy()

        def rebuilt() -> bool:
            with b.wire() as w:
                reply = w.cmd("STAT on/a")
            return reply.startswith("OK") and fields(reply)["have"] == "2"
        assert poll(rebuilt, 30), b.log(b.name)[-3000:]
        with b.wire() as w:
            assert w.get("on/a")[1] == data
        for sid in servers:
            assert "instead of" in a.log(sid)  # "serving catalog <B's> instead of <A's>"
        assert a.holders(data) == list(servers)
    finally:
        stop(a, b)
