"""Storage servers joined to two proxies at once (real processes).

Each proxy here keeps its own SQLite catalog: what is checked is the join
side, that every server joins, beats and lists to each proxy on its own.
Proxies meant to serve the same files share one catalog; with catalogs of
their own, each takes the other's blobs for garbage as soon as a server
lists them to it, so these tests read each file back through the proxy that
stored it, before any listing could judge it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.cluster import Cluster, poll

pytestmark = pytest.mark.slow

SERVERS = {"s0": "up", "s1": "up", "s2": "up"}


def start(root) -> tuple[Cluster, Cluster]:
    a = Cluster(root)
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
def proxies(tmp_path):
    a, b = start(tmp_path)
    try:
        yield a, b
    finally:
        stop(a, b)


def test_each_proxy_sees_every_server_and_stores_through_them(proxies):
    a, b = proxies
    assert a.states() == b.states() == SERVERS
    files = {a: ("via/a", os.urandom(3 << 20)), b: ("via/b", os.urandom(1 << 20))}
    for proxy, (name, data) in files.items():
        with proxy.wire() as w:
            assert w.put(name, data, 2).startswith("OK stored")
        assert len(proxy.holders(data)) == 2  # on the servers' disks, bytes equal
    for proxy, (name, data) in files.items():
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


def test_each_proxy_counting_a_blob_finds_it_missing_in_the_servers_listing(tmp_path):
    """The second proxy starts with an empty catalog and takes in the files
    the servers hold, so both count the same copies; a copy deleted on a
    disk is then found missing by each, from the listing the server sends it."""
    a = Cluster(tmp_path)
    b = a.add_proxy("proxy-b")
    try:
        a.start_proxy()
        for i in range(3):
            a.start_server(f"s{i}")  # joining b too, which is not there yet
        a.wait_up(3)
        data = os.urandom(1 << 20)
        with a.wire() as w:
            assert w.put("counted/by/both", data, 2).startswith("OK stored")
        b.start_proxy()
        b.wait_up(3)
        assert poll(lambda: "catalog rebuilt" in b.log(b.name), 30)
        with b.wire() as w:
            assert w.stat("counted/by/both")["have"] == "2"
        time.sleep(6)  # copies this recent are not judged missing yet
        victim = a.holders(data)[0]
        a.kill(victim, signal.SIGTERM)
        [blob] = a.blob_files(victim)
        blob.unlink()
        a.start_server(victim)  # it joins both again and lists its blobs to each
        for proxy in (a, b):
            assert poll(lambda: f"inventory of {victim}: 1 copies missing" in proxy.log(proxy.name), 30), proxy.name
            with proxy.wire() as w:
                assert w.get("counted/by/both")[1] == data
    finally:
        stop(a, b)
