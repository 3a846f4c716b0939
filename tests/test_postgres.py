"""End to end on a catalog in PostgreSQL: real twistd processes, a real
PostgreSQL server (the session's), real files on the servers' disks."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.cluster import Cluster, Wire, answer, fields, free_port, incoming, poll, sha
from tests.test_web import fetch

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_cluster(tmp_path, postgres):
    """A proxy with its catalog in a fresh PostgreSQL database, and three servers."""
    url = postgres.database()
    c = Cluster(tmp_path, proxy_args=("--catalog", url))
    c.url = url
    try:
        yield c.start(3)
    finally:
        c.stop()
        postgres.drop(url)


def test_every_command_on_a_catalog_in_postgresql(pg_cluster):
    data = os.urandom(300_000)
    with pg_cluster.wire() as w:
        r = w.put("docs/a.bin", data, 3)
        assert r.startswith("OK stored") and fields(r)["version"] == "1", r
        assert sorted(pg_cluster.holders(data)) == ["s0", "s1", "s2"]
        head, got = w.get("docs/a.bin")
        assert got == data and fields(head)["sha256"] == sha(data)
        assert w.put("docs/b.txt", b"hello", 2).startswith("OK stored")
        assert fields(w.put("docs/b.txt", b"again", 1))["version"] == "2"
        assert [line.split()[-1] for line in w.multi("LIST docs/")] == ["docs/a.bin", "docs/b.txt"]
        r = w.cmd("REPLICAS docs/a.bin 1 WAIT")
        assert r.startswith("OK") and fields(r)["have"] == "1", r
        assert poll(lambda: len(pg_cluster.holders(data)) == 1, 20), pg_cluster.holders(data)
        assert w.cmd("DELETE docs/a.bin").startswith("OK deleted")
        assert w.get("docs/a.bin")[0].startswith("ERR notfound")
        assert poll(lambda: not pg_cluster.holders(data), 20)
        assert fields(w.cmd("STATUS"))["files"] == "1"


def test_a_restarted_proxy_keeps_its_files(pg_cluster):
    data = b"kept in postgresql\n" * 1000
    with pg_cluster.wire() as w:
        assert w.put("kept", data, 2).startswith("OK stored")
    pg_cluster.kill_proxy()
    pg_cluster.start_proxy()
    pg_cluster.wait_up(3)
    with pg_cluster.wire() as w:
        assert w.get("kept")[1] == data
        assert fields(w.put("kept", b"newer", 2))["version"] == "2"


def test_postgresql_down_is_unavailable_and_the_proxy_serves_again_by_itself(pg_cluster, postgres):
    """PostgreSQL killed under traffic: commands answer ERR unavailable within
    seconds and the proxy stays up; once PostgreSQL is back, the same proxy
    serves again. A proxy started while it is down starts, answers ERR
    unavailable, and serves once it is up."""
    data = b"before the outage\n" * 100
    with pg_cluster.wire() as w:
        assert w.put("before", data, 2).startswith("OK stored")
    busy = Wire(pg_cluster.port)  # a client connected through the outage
    postgres.server.kill()
    try:
        for command in ("GET before", "STAT before", "LIST", "PUT during 5", "DELETE before", "REPLICAS before 3"):
            reply, took = answer(pg_cluster.port, command)
            assert reply.startswith("ERR unavailable") and took < 5, (command, reply, took)
        assert busy.cmd("STAT before").startswith("ERR unavailable")
        assert pg_cluster.proxy.poll() is None
        # a proxy started meanwhile starts, and answers (a download too: 503, saying why)
        pg_cluster.kill_proxy()
        http = free_port()
        pg_cluster.start_proxy("--http", f"tcp:{http}:interface=127.0.0.1")
        reply, took = answer(pg_cluster.port, "GET before")
        assert reply.startswith("ERR unavailable") and took < 5, reply
        for path in ("/files/before", "/api/files", "/api/status", "/"):
            status, _, body = fetch(http, path)
            assert status == 503 and body.startswith(b"unavailable"), (path, status, body)
    finally:
        postgres.start()
    pg_cluster.wait_up(3)

    def serves() -> bool:
        reply, _ = answer(pg_cluster.port, "STAT before")
        return reply.startswith("OK")
    assert poll(serves, 20), pg_cluster.log("proxy")[-3000:]
    with pg_cluster.wire() as w:
        assert w.get("before")[1] == data
        assert w.put("after", b"after the outage", 2).startswith("OK stored")
        assert w.get("after")[1] == b"after the outage"
    busy.close()
    assert fetch(http, "/files/before")[2] == data
    assert pg_cluster.proxy.poll() is None
    assert "Traceback" not in pg_cluster.log("proxy")


def test_a_put_as_postgresql_dies_is_refused_and_keeps_nothing(pg_cluster, postgres):
    """PostgreSQL killed just before a PUT: the proxy, which tells the
    client to send while the catalog allocates the version, either refuses
    at once or reads the bytes and answers ERR unavailable, within seconds;
    nothing of it is stored, and the connection goes on serving."""
    data = os.urandom(300_000)
    with pg_cluster.wire() as w:
        assert w.put("warm", b"warm", 2).startswith("OK stored")
        postgres.server.kill()
        try:
            started = time.monotonic()
            reply = w.put("during", data, 2)
            assert reply.startswith("ERR unavailable") and time.monotonic() - started < 5, reply
            assert len(w.multi("HELP")) > 5  # the connection still serves
        finally:
            postgres.start()
        pg_cluster.wait_up(3)
        assert poll(lambda: w.put("after", b"after", 2).startswith("OK stored"), 20)
        assert w.get("during")[0].startswith("ERR notfound")
    assert not pg_cluster.holders(data) and not any(incoming(pg_cluster, f"s{i}") for i in range(3))
    assert pg_cluster.proxy.poll() is None and "Traceback" not in pg_cluster.log("proxy")


def test_connections_the_database_closed_while_idle_are_made_again_before_use(pg_cluster):
    """The database closes the proxy's connections while they idle (as a
    restart does): the next commands are answered as usual, none with ERR
    unavailable."""
    import psycopg

    data = b"kept\n" * 100
    with pg_cluster.wire() as w:
        assert w.put("idle/a", data, 2).startswith("OK stored")
    with psycopg.connect(pg_cluster.url, autocommit=True) as admin:
        closed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                               " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
    assert closed >= 2  # the proxy's writer and reader at least
    time.sleep(0.5)
    with pg_cluster.wire() as w:
        assert w.cmd("STAT idle/a").startswith("OK name=idle/a")
        assert w.get("idle/a")[1] == data
        assert w.put("idle/b", b"new", 2).startswith("OK stored")
        assert w.cmd("DELETE idle/b").startswith("OK deleted")


def test_a_bad_catalog_url_is_refused_naming_the_option(tmp_path):
    import subprocess

    from tests.cluster import TWISTD

    done = subprocess.run([TWISTD, "-n", "--pidfile", str(tmp_path / "p.pid"), "deposito-proxy",
                           "--catalog", "mysql://nobody@localhost/x"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode != 0 and "--catalog" in (done.stderr or done.stdout).splitlines()[0]


def test_a_second_proxy_on_the_catalog_serves_writes_at_once(pg_cluster):
    """Several proxies may share a PostgreSQL catalog: a second one started
    on it (the servers joined to both) stores a file at its first PUT, and
    each proxy reads what the other wrote."""
    data = b"written through the first proxy\n" * 100
    second = pg_cluster.add_proxy("second")
    second.start_proxy()
    for sid in list(pg_cluster.servers):  # the servers join the second proxy too
        pg_cluster.kill(sid, signal.SIGTERM)
        pg_cluster.start_server(sid)
    pg_cluster.wait_up(3)
    second.wait_up(3)
    try:
        with pg_cluster.wire() as w:
            assert w.put("first", data, 2).startswith("OK stored")
        with second.wire() as w:
            r = w.put("second", b"through the second", 2)
            assert r.startswith("OK stored") and fields(r)["version"] == "1", r
            assert w.get("first")[1] == data
        with pg_cluster.wire() as w:
            assert w.get("second")[1] == b"through the second"
            assert [line.split()[-1] for line in w.multi("LIST")] == ["first", "second"]
        assert pg_cluster.proxy.poll() is None and second.proxy.poll() is None
    finally:
        second.kill_proxy()
