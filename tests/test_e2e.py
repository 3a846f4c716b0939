"""End to end: real twistd processes, real sockets, real files."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

from deposito.placement import read_order
from deposito.roster import Member
from tests.cluster import (TWISTD, Cluster, Wire, WireError, fields, free_port, incoming, poll, serving_servers, sha,
                           socket_inodes)

pytestmark = pytest.mark.slow


def test_round_trip_empty_small_and_multi_mib(shared_cluster):
    with shared_cluster.wire() as w:
        for name, data, replicas in [("empty", b"", 2), ("small.txt", b"hello deposito\n", 3),
                                     ("big/one.bin", os.urandom(5 << 20 | 123), 3)]:
            r = w.put(name, data, replicas)
            assert r.startswith("OK stored"), r
            f = fields(r)
            assert f["sha256"] == sha(data) and int(f["size"]) == len(data) and f["replicas"] == str(replicas)
            head, got = w.get(name)
            assert got == data, head
            assert fields(head)["sha256"] == sha(data)
            if data:
                holders = shared_cluster.holders(data)
                assert len(holders) == replicas  # one copy each on distinct disks
            st = w.stat(name)
            assert st["have"] == str(replicas) and len(st["servers"].split(",")) == replicas


def test_put_refused_before_any_byte_when_too_few_servers(shared_cluster):
    with shared_cluster.wire() as w:
        assert w.cmd("PUT x 10 4").startswith("ERR unavailable")
        assert w.cmd("PUT x 10 17").startswith("ERR badargs")
        assert w.cmd("PUT x 10 0").startswith("ERR badargs")
        # the connection is still usable and no version was made
        assert w.cmd("GET x").startswith("ERR notfound")


def test_pipelined_requests_after_the_bytes(shared_cluster):
    with shared_cluster.wire() as w:
        assert w.cmd("PUT piped 3 2").startswith("OK send")
        w.send(b"abcSTAT piped\nGET piped\n")
        assert w.line().startswith("OK stored")
        assert fields(w.line())["size"] == "3"
        head = w.line()
        assert head.startswith("OK 3 ") and w.exact(3) == b"abc"


def test_overwrite_makes_a_new_version_and_drops_old_copies(shared_cluster):
    old, new = os.urandom(300_000), os.urandom(200_000)
    with shared_cluster.wire() as w:
        v1 = int(fields(w.put("over", old, 3))["version"])
        assert len(shared_cluster.holders(old)) == 3
        v2 = int(fields(w.put("over", new, 2))["version"])
        assert v2 > v1
        assert w.get("over")[1] == new
        assert poll(lambda: shared_cluster.holders(old) == [], 10), "old copies were not removed"
        assert len(shared_cluster.holders(new)) == 2
        # versions keep growing across DELETE
        assert w.cmd("DELETE over").startswith("OK deleted")
        assert poll(lambda: shared_cluster.holders(new) == [], 10)
        v3 = int(fields(w.put("over", b"again", 1))["version"])
        assert v3 > v2


def test_a_slow_upload_finishing_after_a_newer_version_and_its_delete_brings_nothing_back(shared_cluster):
    first = os.urandom(8 << 20)
    with shared_cluster.wire() as a, shared_cluster.wire() as b:
        assert a.cmd(f"PUT e2e/race {len(first)} 1") == f"OK send {len(first)}"
        a.send(first[: 1 << 20])  # version 1 is given out, its bytes still coming
        assert fields(b.put("e2e/race", b"n" * 100, 1))["version"] == "2"
        assert b.cmd("DELETE e2e/race") == "OK deleted name=e2e/race"
        a.send(first[1 << 20:])
        assert fields(a.line())["version"] == "1"  # stored, and superseded at once by the delete
        assert a.cmd("GET e2e/race").startswith("ERR notfound")
        assert fields(a.put("e2e/race", b"again", 1))["version"] == "3"
        assert a.get("e2e/race")[1] == b"again"
    assert poll(lambda: shared_cluster.holders(first) == [], 10)  # version 1's copy goes as garbage


def test_list_in_name_order_with_prefix(shared_cluster):
    with shared_cluster.wire() as w:
        for name in ("lst/b", "lst/a", "lst/c d"):
            assert w.put(name, name.encode(), 2).startswith("OK stored")
        lines = w.multi("LIST lst/")
        assert [ln.split(None, 3)[3] for ln in lines] == ["lst/a", "lst/b", '"lst/c d"']
        assert all(ln.split()[1:3] == ["2", "2"] for ln in lines)


def test_hostile_input_gets_err_and_the_proxy_keeps_serving(shared_cluster):
    with shared_cluster.wire() as w:
        assert w.cmd("FROB") == "ERR badcommand unknown command 'FROB' (try HELP)"
        assert w.cmd("ſtat x").startswith("ERR badcommand")  # its upper case is STAT
        assert w.cmd("GET").startswith("ERR badargs")
        assert w.cmd('GET "unterminated').startswith("ERR badargs")
        assert w.cmd("PUT a -1").startswith("ERR badargs")
        assert w.cmd("PUT a 99999999999999999999999").startswith("ERR badargs")
        assert w.cmd("GET a\x01b").startswith("ERR badargs")
        assert w.cmd("GET " + "x" * 1025).startswith("ERR badargs")
        w.send(b"GET \xff\xfe\n")
        assert w.line().startswith("ERR badargs")
        assert w.cmd("help").startswith("OK")
    with shared_cluster.wire() as w:
        w.send(b"A" * 9000)
        assert w.line() == "ERR badargs line too long"
        with pytest.raises((WireError, OSError)):
            w.line()
    with shared_cluster.wire() as w:
        assert w.put("still-serving", b"yes", 2).startswith("OK stored")


def test_empty_line_is_ignored(shared_cluster):
    with shared_cluster.wire() as w:
        w.send(b"\n\r\nQUIT\r\n")
        assert w.line() == "OK bye"


def test_get_survives_kill_9_of_a_server_holding_a_copy(cluster):
    data = os.urandom(3 << 20)
    with cluster.wire() as w:
        assert w.put("k", data, 2).startswith("OK stored")
    holders = cluster.holders(data)
    assert len(holders) == 2
    cluster.kill(holders[0])
    for _ in range(4):  # whichever copy it picks, the bytes are right
        with cluster.wire() as w:
            assert w.get("k")[1] == data
    cluster.kill(holders[1])
    with cluster.wire() as w:
        assert w.cmd("GET k").startswith("ERR unavailable")


def test_get_fails_over_mid_stream(cluster):
    """A copy that dies while its bytes flow: the next copy continues at the same offset."""
    data = os.urandom(64 << 20)
    with cluster.wire() as w:
        assert w.put("mid", data, 3).startswith("OK stored")
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        head = w.cmd("GET mid")
        assert head.startswith(f"OK {len(data)} ")
        first = w.exact(1 << 20)
        serving = poll(lambda: serving_servers(cluster), 5)
        assert len(serving) == 1
        cluster.kill(serving[0])
        rest = w.exact(len(data) - len(first))
        assert sha(first + rest) == sha(data)
    assert f"from {serving[0]} failed at" in cluster.log("proxy")


def test_catalog_survives_kill_9_of_the_proxy(cluster):
    data = os.urandom(1 << 20)
    with cluster.wire() as w:
        version = fields(w.put("durable", data, 3))["version"]
    cluster.kill_proxy()
    cluster.start_proxy()
    cluster.wait_up(3)
    with cluster.wire() as w:
        head, got = w.get("durable")
        assert got == data and fields(head)["version"] == version
        assert w.stat("durable")["have"] == "3"


@pytest.mark.parametrize("end", ["close", "half-close"])
def test_broken_upload_leaves_no_version_and_no_blob(cluster, end):
    """A client gone mid-upload, or one that shut its sending side (told
    why, then closed: the bytes went through the kernel's splice), stores
    nothing, and every server's partial blob is removed."""
    size = 8 << 20
    w = cluster.wire()
    assert w.cmd(f"PUT broken {size} 3").startswith("OK send")
    w.send(os.urandom(size // 2))
    assert poll(lambda: all(incoming(cluster, s) for s in cluster.servers), 10)
    if end == "half-close":
        w.sock.shutdown(socket.SHUT_WR)
        assert w.line() == f"ERR badargs upload cut short: the client sent less than {size} bytes, closing"
        with pytest.raises(WireError):
            w.line()
    w.close()
    with cluster.wire() as w2:
        assert w2.cmd("GET broken").startswith("ERR notfound")
    assert poll(lambda: not any(incoming(cluster, s) for s in cluster.servers), 10)
    assert all(cluster.blob_files(s) == [] for s in cluster.servers)


def test_target_killed_during_put_still_gives_n_copies(cluster):
    cluster.start_server("s3")
    cluster.wait_up(4)
    data = os.urandom(16 << 20)
    with cluster.wire() as w:
        assert w.cmd(f"PUT survivor {len(data)} 3").startswith("OK send")
        w.send(data[: len(data) // 2])
        assert poll(lambda: sum(bool(incoming(cluster, s)) for s in cluster.servers) == 3, 10)
        victim = next(s for s in cluster.servers if incoming(cluster, s))
        cluster.kill(victim)
        w.sock.settimeout(15)  # the rest goes on at once, not after the 30 s a stalled server gets
        w.send(data[len(data) // 2:])
        r = w.line()
        assert r.startswith("OK stored") and fields(r)["replicas"] == "3", r
        holders = cluster.holders(data)
        assert len(holders) == 3 and victim not in holders
        assert w.get("survivor")[1] == data


def test_put_with_every_target_dead_is_unavailable_and_keeps_nothing(cluster):
    data = os.urandom(4 << 20)
    with cluster.wire() as w:
        assert w.cmd(f"PUT doomed {len(data)} 3").startswith("OK send")
        w.send(data[:1 << 20])
        assert poll(lambda: all(incoming(cluster, s) for s in cluster.servers), 10)
        for sid in list(cluster.servers):
            cluster.kill(sid)
        w.send(data[1 << 20:])
        assert w.line().startswith("ERR unavailable")
        assert w.cmd("GET doomed").startswith("ERR notfound")  # connection still usable


def test_servers_show_up_and_down(cluster):
    assert cluster.states() == {"s0": "up", "s1": "up", "s2": "up"}
    cluster.kill("s1")
    assert poll(lambda: cluster.states()["s1"] == "down", 10)
    with cluster.wire() as w:
        line = next(ln for ln in w.multi("SERVERS") if ln.startswith("s0 "))
    f = fields(line)
    assert f["zone"] == "zs0" and int(f["capacity"]) > 0 and line.split()[1].startswith("127.0.0.1:")


def test_server_started_before_its_proxy_joins_later(tmp_path):
    """Meanwhile it says once that the proxy cannot be reached, not at each
    try, and says when it can be again."""
    c = Cluster(tmp_path)
    try:
        c.start_server("s0")
        time.sleep(4.5)  # tries every 2 s at most
        c.start_proxy()
        c.wait_up(1, timeout=20)
        log = c.log("s0")
        assert log.count("cannot reach the proxy at") == 1, log
        assert "can be reached again" in log
        assert "Scheduling retry" not in log and "_JoinFactory" not in log
    finally:
        c.stop()


def test_a_refused_server_tries_again_and_each_side_says_the_refusal_once(tmp_path):
    """A proxy that cannot read its catalog refuses servers; they come back
    every second or two, and each side says it once while it lasts. The
    server's tries are counted on a socket that answers as such a proxy does."""
    refusal = b"ERR unavailable the catalog is not read yet; try again shortly\r\n"
    fake = socket.create_server(("127.0.0.1", 0))
    c = Cluster(tmp_path)
    c.cport = fake.getsockname()[1]
    tries = 0
    try:
        c.start_server("s0")
        fake.settimeout(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            conn, _ = fake.accept()
            tries += 1
            conn.makefile("rb").readline()  # its JOIN
            conn.sendall(refusal)
            conn.close()
        assert tries >= 3
        assert poll(lambda: "refused this server: unavailable" in c.log("s0"), 5)
        assert c.log("s0").count("refused this server") == 1, c.log("s0")
        assert "JoinProtocol#warn] the proxy at" in c.log("s0")  # a proxy not ready yet: a passing thing
        # a listener that closes without a word (not a proxy's cluster port): said once too
        closes = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            conn, _ = fake.accept()
            closes += 1
            conn.close()
        assert closes >= 3
        assert poll(lambda: "closed the connection before welcoming" in c.log("s0"), 5)
        assert c.log("s0").count("closed the connection before welcoming") == 1, c.log("s0")
        c.kill("s0", signal.SIGTERM)

        # the proxy's side: its catalog database out of reach, so the catalog is never read
        fake.close()
        c.start_proxy("--catalog", f"postgresql://deposito@127.0.0.1:{free_port()}/none")
        c.start_server("s1")
        assert poll(lambda: "refused a storage server" in c.log("proxy"), 10), c.log("proxy")[-2000:]
        time.sleep(5)
        assert c.log("proxy").count("refused a storage server") == 1, c.log("proxy")
        assert c.log("s1").count("refused this server") == 1, c.log("s1")
        assert c.log("s1").count("cannot reach the proxy") == 0
    finally:
        fake.close()
        c.stop()


def test_sigterm_stops_cleanly_and_removes_the_pidfile(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.start_proxy()
        c.start_server("s0")
        c.wait_up(1)
        c.kill("s0", signal.SIGTERM)
        c.kill_proxy(signal.SIGTERM)
        # twistd ends by re-raising the signal once the services have stopped
        assert c.proxy.returncode in (0, -signal.SIGTERM)
        assert "Server Shut Down" in c.log("proxy") and "Server Shut Down" in c.log("s0")
        assert not (tmp_path / "proxy.pid").exists() and not (tmp_path / "s0.pid").exists()
    finally:
        c.stop()


def test_a_proxy_that_stops_takes_none_of_its_servers_for_down(tmp_path):
    """Its servers' connections close as it stops: that says nothing of the servers."""
    c = Cluster(tmp_path)
    try:
        c.start(2)
        with c.wire() as w:
            assert w.put("f", b"x" * 1000, 2).startswith("OK stored")
        c.kill_proxy(signal.SIGTERM)
        log = c.log("proxy")
        stopping = log[log.index("Received SIGTERM"):]
        assert "Server Shut Down" in stopping and "is down" not in stopping, stopping
    finally:
        c.stop()


@pytest.mark.parametrize("plugin,args,option", [
    ("deposito-proxy", ["--replicas", "0"], "--replicas"),
    ("deposito-proxy", ["--port", "nonsense:1"], "--port"),
    ("deposito-proxy", ["--dead-after", "soon"], "--dead-after"),
    ("deposito-proxy", ["--tokens", "no-such-file"], "--tokens"),
    ("deposito-proxy", ["--max-size", "big"], "--max-size"),
    ("deposito-proxy", ["--secret", "s.txt"], "--secret"),
    ("deposito-server", ["--scrub-every", "0"], "--scrub-every"),
    ("deposito-server", ["--capacity", "lots"], "--capacity"),
    ("deposito-server", ["--name", "a b"], "--name"),
])
def test_bad_option_exits_nonzero_naming_it(tmp_path, plugin, args, option):
    r = subprocess.run([TWISTD, "-n", "--pidfile", str(tmp_path / "x.pid"), plugin] + args,
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode != 0
    assert option in r.stderr.splitlines()[0]


def test_get_survives_a_frozen_server(cluster):
    """A server that stops answering (SIGSTOP) without closing its sockets."""
    data = os.urandom(2 << 20)
    with cluster.wire() as w:
        assert w.put("frozen", data, 2).startswith("OK stored")
    holders = cluster.holders(data)
    [blob] = {f.name for f in cluster.blob_files(holders[0])}
    frozen = read_order(blob, [Member(id=h, zone="", host="", port=0) for h in holders])[0].id  # read first
    cluster.servers[frozen].send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        for _ in range(4):
            with cluster.wire() as w:
                assert w.get("frozen")[1] == data
        assert time.monotonic() - started < 30
        assert cluster.states()[frozen] == "down"
    finally:
        cluster.servers[frozen].send_signal(signal.SIGCONT)


def test_a_server_frozen_mid_blob_ends_that_read_short_and_never_with_wrong_bytes(cluster):
    """A server on the proxy's host writes a GET's bytes into the reader's
    socket itself (deposito.protocols.handoff). Frozen mid-blob, it may yet
    write when it comes to, so no other copy can take over: once it is taken
    for down, the reader's connection ends, every byte it got right; the
    next GET is whole."""
    data = os.urandom(64 << 20)
    with cluster.wire() as w:
        assert w.put("icy", data, 2).startswith("OK stored")
    w = cluster.wire()
    try:
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        assert w.cmd("GET icy").startswith(f"OK {len(data)} ")
        got = bytearray(w.exact(1 << 20))
        serving = poll(lambda: serving_servers(cluster), 5)
        assert len(serving) == 1
        cluster.servers[serving[0]].send_signal(signal.SIGSTOP)
        started = time.monotonic()
        got += w.buf
        while chunk := w.sock.recv(1 << 20):
            got += chunk
        assert time.monotonic() - started < 20
        assert len(got) < len(data) and got == data[:len(got)]
        # the proxy ends the reader's connection, then logs why: read the log until it says so
        assert poll(lambda: "stopped answering mid-blob" in cluster.log("proxy"), 5)
        with cluster.wire() as again:
            assert again.get("icy")[1] == data
    finally:
        w.close()
        for proc in cluster.servers.values():
            proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("handoff", [True, False], ids=["handed-off", "relayed"])
def test_readers_that_leave_mid_get_leave_every_process_serving(tmp_path, handoff):
    """The reader's socket written by the server itself, or relayed by the proxy:
    readers that leave mid-blob (closing, or resetting) cost no one else a byte."""
    cluster = Cluster(tmp_path, server_args=() if handoff else ("--no-handoff",)).start(2)
    try:
        data = os.urandom(48 << 20)
        with cluster.wire() as w:
            assert w.put("left", data, 2).startswith("OK stored")
        for reset in (False, True, False):
            w = cluster.wire()
            w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            assert w.cmd("GET left").startswith(f"OK {len(data)} ")
            assert w.exact(1 << 20) == data[:1 << 20]
            assert poll(lambda: serving_servers(cluster), 5)
            if reset:
                w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.close()
        with cluster.wire() as w:
            assert w.get("left")[1] == data
            assert w.cmd("STAT left").startswith("OK name=left")
        assert poll(lambda: serving_servers(cluster) == [] or None, 10)  # nobody left sending
        for name in ("proxy", "s0", "s1"):
            assert [ln for ln in cluster.log(name).splitlines() if "Traceback" in ln or "Unhandled" in ln] == []
    finally:
        cluster.stop()


def test_tokens_and_max_size_on_a_real_proxy(tmp_path):
    import urllib.error
    import urllib.request

    from deposito.blocking import BlockingClient
    from deposito.errors import Denied, TooLarge
    from tests.cluster import free_port

    (tmp_path / "tokens").write_text("# clients\nalpha\n\nbeta\n")
    http = free_port()
    c = Cluster(tmp_path, proxy_args=("--tokens", str(tmp_path / "tokens"), "--max-size", "1M",
                                      "--http", f"tcp:{http}:interface=127.0.0.1"))
    try:
        c.start_proxy()
        c.start_server("s0")
        with c.wire() as w:
            assert w.cmd("SERVERS") == "ERR denied AUTH <token> first"
            assert w.cmd("AUTH gamma") == "ERR denied wrong token"
            assert w.cmd("AUTH beta") == "OK"
            assert poll(lambda: w.multi("SERVERS") and w.multi("SERVERS")[0].split()[2] == "up", 20)
            assert w.cmd(f"PUT big {(1 << 20) + 1} 1").startswith("ERR toolarge")
        with BlockingClient(("127.0.0.1", c.port), token="alpha") as client:
            client.put("ok", io.BytesIO(b"hello"), replicas=1)
            with pytest.raises(TooLarge):
                client.put("big", io.BytesIO(b"x" * ((1 << 20) + 1)), replicas=1)
        with pytest.raises(Denied):
            with BlockingClient(("127.0.0.1", c.port), token="nope") as client:
                client.stat("ok")
        url = f"http://127.0.0.1:{http}/files/ok"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code == 401
        for scheme in ("Bearer", "bearer"):  # a scheme's case does not matter
            req = urllib.request.Request(url, headers={"Authorization": f"{scheme}  alpha"})
            assert urllib.request.urlopen(req, timeout=10).read() == b"hello"
        for wrong in ("Basic alpha", "Bearer \xc3", "Bearer gamma"):  # (the second is not ASCII)
            started = time.monotonic()
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": wrong}), timeout=10)
            assert e.value.code == 401, wrong
            assert time.monotonic() - started >= 0.9, wrong  # slowed as the text port's AUTH: guessing is slow
        assert c.log("proxy").count("an HTTP client from") == 3
        for path in ("/api", "/nothing", "/api/nothing"):  # a quiet 404, also to HEAD (a traceback each, before)
            for method in ("GET", "HEAD"):
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{http}{path}", method=method),
                                           timeout=10)
                assert e.value.code == 404, (path, method)
        # the open pages' recent events that name a file: only for a request with a token
        c.start_server("s1")
        with c.wire() as w:
            assert w.cmd("AUTH beta") == "OK"
            assert poll(lambda: sum(line.split()[2] == "up" for line in w.multi("SERVERS")) == 2, 20)
            assert w.put("payroll/ceo", b"x" * 10, 1).startswith("OK stored")
            assert w.cmd("REPLICAS payroll/ceo 2 WAIT").startswith("OK")  # "made a copy of payroll/ceo on ..."
        for path in ("/", "/api/status"):
            bare = urllib.request.urlopen(f"http://127.0.0.1:{http}{path}", timeout=10).read()
            held = urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{http}{path}", headers={"Authorization": "Bearer alpha"}), timeout=10).read()
            assert b"payroll/ceo" not in bare and b"payroll/ceo" in held, path
        assert "Traceback" not in c.log("proxy")
    finally:
        c.stop()


def test_sighup_reads_tokens_and_s3_keys_again_and_stops_neither_process(tmp_path):
    """An operator adds a key or takes a leaked one out without a restart
    (SIGHUP stopped the proxy, before, logging nothing); a file that fails
    keeps the ones read before."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from deposito.s3.keys import new_key_pair

    tokens, keys = tmp_path / "tokens", tmp_path / "s3-keys"
    (old_id, old_secret), (new_id, new_secret) = new_key_pair(), new_key_pair()
    tokens.write_text("alpha\n")
    keys.write_text(f"{old_id} {old_secret}\n")
    s3_port = free_port()
    c = Cluster(tmp_path, proxy_args=("--tokens", str(tokens), "--s3", f"tcp:{s3_port}:interface=127.0.0.1",
                                      "--s3-keys", str(keys)))

    def auth(token: str) -> str:
        with c.wire() as w:
            return w.cmd(f"AUTH {token}")

    def buckets(key_id: str, secret: str) -> str:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name="us-east-1",
                              aws_access_key_id=key_id, aws_secret_access_key=secret,
                              config=Config(retries={"max_attempts": 1}))
        try:
            client.list_buckets()
            return "ok"
        except ClientError as e:
            return e.response["Error"]["Code"]

    try:
        c.start_proxy()
        c.start_server("s0")
        assert poll(lambda: buckets(old_id, old_secret) == "ok", 20)
        assert auth("alpha") == "OK" and auth("beta") == "ERR denied wrong token"
        assert buckets(new_id, new_secret) == "InvalidAccessKeyId"
        tokens.write_text("beta\n")
        keys.write_text(f"{new_id} {new_secret}\n")
        for proc in (c.proxy, c.servers["s0"]):
            proc.send_signal(signal.SIGHUP)
        assert poll(lambda: "SIGHUP: --s3-keys read again: 1 now" in c.log("proxy"), 20), c.log("proxy")[-2000:]
        assert auth("beta") == "OK" and auth("alpha") == "ERR denied wrong token"
        assert buckets(new_id, new_secret) == "ok" and buckets(old_id, old_secret) == "InvalidAccessKeyId"
        keys.write_text("a line that is no key\n")
        tokens.unlink()
        c.proxy.send_signal(signal.SIGHUP)
        assert poll(lambda: "SIGHUP: --tokens not read again" in c.log("proxy"), 20)
        assert poll(lambda: "SIGHUP: --s3-keys not read again" in c.log("proxy"), 20)
        assert auth("beta") == "OK" and buckets(new_id, new_secret) == "ok"
        assert "SIGHUP: no file to read again" in c.log("s0")
        assert c.proxy.poll() is None and c.servers["s0"].poll() is None
        with c.wire() as w:
            assert w.cmd("AUTH beta") == "OK"
            assert poll(lambda: w.multi("SERVERS")[0].split()[2] == "up", 20)  # the server serves on
            assert w.put("after-hangup", b"still here", 1).startswith("OK stored")
            assert w.get("after-hangup")[1] == b"still here"
        assert "Traceback" not in c.log("proxy") + c.log("s0")
    finally:
        c.stop()


def test_a_burst_of_puts_with_a_cluster_secret_stores_every_one(tmp_path):
    """150 PUTs sent at once: the proxy opens that many connections to each
    server at once, each proving the secret; the server's bound on those
    not proven yet never closes one still proving itself (with a first
    version of that bound, 36 of 100 such PUTs failed)."""
    secret = tmp_path / "secret"
    secret.write_text("a cluster secret of some length\n")
    c = Cluster(tmp_path, proxy_args=("--secret", str(secret)), server_args=("--secret", str(secret))).start(2)
    try:
        wires = [Wire(c.port, timeout=60) for _ in range(150)]
        data = os.urandom(2000)
        for i, w in enumerate(wires):
            w.send(f"PUT burst/{i} {len(data)}\n".encode() + data)
        replies = []
        for w in wires:
            first = w.line()
            replies.append(first if not first.startswith("OK send") else w.line())
            w.close()
        assert [fields(r).get("replicas") for r in replies] == ["2"] * 150, sorted(set(replies))[:3]
        assert "cannot reach storage server" not in c.log("proxy")
    finally:
        c.stop()


def test_cluster_secret_on_join_and_blob_ports(tmp_path):
    (tmp_path / "secret").write_text("  correct horse battery staple \n")
    (tmp_path / "other").write_text("something else")
    c = Cluster(tmp_path, proxy_args=("--secret", str(tmp_path / "secret")),
                server_args=())
    try:
        c.start_proxy()
        c.start_server("s0", "--secret", str(tmp_path / "secret"))
        c.start_server("s1", "--secret", str(tmp_path / "secret"))
        c.start_server("s2", "--secret", str(tmp_path / "other"))
        c.start_server("s3")
        c.wait_up(2)
        time.sleep(1.5)
        assert sorted(c.states()) == ["s0", "s1"]  # refused servers are not listed
        data = os.urandom(300_000)
        with c.wire() as w:
            assert w.put("secret-file", data, 2).startswith("OK stored")
            assert w.get("secret-file")[1] == data
        assert "refused a storage server" in c.log("proxy")
        assert b"correct horse" not in (tmp_path / "proxy.log").read_bytes()
        # the blob port wants the proof too
        port = int(next(ln for ln in Wire(c.port).multi("SERVERS") if ln.startswith("s0")).split()[1].split(":")[1])
        s = socket.create_connection(("127.0.0.1", port), 5)
        f = s.makefile("rb")
        assert f.readline().startswith(b"HELLO ")
        s.sendall(b"DELETE " + b"0" * 32 + b"\n")
        assert f.readline().startswith(b"ERR denied")
        s.close()
        # and so does the local port, where GETs are handed off
        big = os.urandom(3 << 20)
        with c.wire() as w:
            assert w.put("secret-big", big, 2).startswith("OK stored")
            assert w.get("secret-big")[1] == big
        assert "is on this host" in c.log("proxy")
        held = socket_inodes(c.servers["s0"].pid)
        [name] = {row.split()[-1] for row in open("/proc/net/unix")
                  if "@deposito-server/s0/" in row and row.split()[6] in held}
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        u.settimeout(5)
        u.connect("\0" + name[1:])
        assert u.recv(100).startswith(b"HELLO ")
        socket.send_fds(u, [b"OPEN " + b"0" * 32 + b" 0\n"], [u.fileno()])  # a socket before the proof
        said = b""
        while chunk := u.recv(100):
            said += chunk
        assert said in (b"", b"ERR denied AUTH <nonce> <proof> first: this server holds a cluster secret\r\n")
        u.close()
        with c.wire() as w:
            assert w.get("secret-big")[1] == big
    finally:
        c.stop()


def test_sigusr2_writes_every_threads_stack_and_the_processes_go_on_serving(shared_cluster):
    """An operator's look inside a stuck process: `kill -USR2` appends the
    stack of every thread to stacks.txt in its data folder."""
    c = shared_cluster
    assert c.proxy is not None and "s0" in c.servers
    for process, folder in ((c.proxy, c.root / c.name), (c.servers["s0"], c.server_dir("s0"))):
        process.send_signal(signal.SIGUSR2)
        stacks = folder / "stacks.txt"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "mainLoop" not in (stacks.read_text() if stacks.exists() else ""):
            time.sleep(0.05)
        text = stacks.read_text()
        assert "Current thread 0x" in text and "mainLoop" in text, text[-2000:]  # the reactor's own stack
        assert process.poll() is None
    with c.wire() as w:
        assert w.put("after/usr2", b"still here", 2).startswith("OK stored")
        assert w.get("after/usr2")[1] == b"still here"


def test_more_idle_connections_than_the_port_holds_give_way_to_a_client(shared_cluster):
    """1100 connections that send nothing: past the cap (1024) the newest
    are turned away, but once those held have idled a few seconds, a client
    gets in and is served, and an idle one is told why it was closed."""
    from deposito.listening import MAKE_ROOM_AFTER, MAX_CONNECTIONS

    idle = []
    try:
        for i in range(MAX_CONNECTIONS + 76):
            idle.append(socket.create_connection(("127.0.0.1", shared_cluster.port), timeout=10))
            greeting = idle[-1].recv(200)  # accepted: the next is not left in a full backlog
            assert greeting.startswith(b"OK deposito" if i < MAX_CONNECTIONS else (b"OK deposito", b"ERR unavailable too many"))
        time.sleep(MAKE_ROOM_AFTER + 0.5)
        with shared_cluster.wire() as w:
            assert w.cmd("PUT crowded/f 5 1").startswith("OK send")
            w.send(b"hello")
            assert w.line().startswith("OK stored")
            assert w.cmd("GET crowded/f").startswith("OK 5 ") and w.exact(5) == b"hello"
        said = b""
        while chunk := idle[0].recv(4096):  # the oldest: closed to make room, with a word
            said += chunk
        assert said == b"ERR unavailable closed to make room: the proxy is full and this connection was idle\r\n"
    finally:
        for s in idle:
            s.close()
