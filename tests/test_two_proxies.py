"""Two proxies on one catalog in PostgreSQL (the session's server) and
storage servers joined to both: real twistd processes, files read back
through either proxy, copies counted on the servers' disks.

What is held here is section 7 of the contract: either proxy is a full front
door that reads what the other wrote at once; versions stay distinct across
both; background work is done once, by one proxy at a time, so copies on the
disks converge to exactly the wanted count; the work of a proxy killed with
SIGKILL passes to the other once its lease (``--lease``) runs out; a server
is dead only when no live proxy sees it; the database down is
``ERR unavailable`` and both proxies serve again by themselves.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster import Cluster, Wire, WireError, answer, fields, incoming, incoming_bytes, poll, sha, shut

pytestmark = pytest.mark.slow

LEASE = 3  # seconds: a proxy silent that long is retired by the other
SHORT_LEASE = ("--lease", str(LEASE))


def start_two(root: Path, url: str, *proxy_args: str, servers: int = 3) -> tuple[Cluster, Cluster]:
    """Proxies ``proxy`` and ``proxy-b`` on the catalog at ``url``, and
    servers s0, s1... joined to both."""
    a = Cluster(root, proxy_args=("--catalog", url, *proxy_args))
    b = a.add_proxy("proxy-b")
    try:
        a.start_proxy()
        b.start_proxy()
        for i in range(servers):
            a.start_server(f"s{i}")
        a.wait_up(servers)
        b.wait_up(servers)
    except BaseException:
        stop_two(a, b)
        raise
    return a, b


def stop_two(a: Cluster, b: Cluster) -> None:
    for c in (a, b):  # a proxy a test froze cannot stop
        if c.proxy is not None and c.proxy.poll() is None:
            c.proxy.send_signal(signal.SIGCONT)
    b.stop()
    a.stop()  # and the servers, which the two share


@contextmanager
def two_proxies(root: Path, postgres, *proxy_args: str, servers: int = 3) -> Iterator[tuple[Cluster, Cluster]]:
    """Two proxies on a fresh database, and the servers; all stopped after."""
    url = postgres.database()
    try:
        a, b = start_two(root, url, *proxy_args, servers=servers)
        a.url = url
        try:
            yield a, b
        finally:
            stop_two(a, b)
    finally:
        postgres.drop(url)


@pytest.fixture(scope="class")
def pair(tmp_path_factory, postgres):
    """Two proxies for the tests of a class, which kill nothing and each use names of their own."""
    with two_proxies(tmp_path_factory.mktemp("pair"), postgres) as both:
        yield both


def names(cluster: Cluster, prefix: str = "") -> list[str]:
    with cluster.wire() as w:
        return [line.split()[-1] for line in w.multi(f'LIST "{prefix}"')]


def only(counted: Counter[str], contents: dict[str, bytes] | list[bytes]) -> dict[str, int]:
    """The copies counted of these contents alone (by sha256), the others left out."""
    digests = {sha(d) for d in (contents.values() if isinstance(contents, dict) else contents)}
    return {digest: n for digest, n in counted.items() if digest in digests}


def each(contents: dict[str, bytes], n: int) -> dict[str, int]:
    """Every one of these contents ``n`` times."""
    return {sha(d): n for d in contents.values()}


def leftovers(cluster: Cluster) -> list[str]:
    """Writes under way on any server's disk (incoming files)."""
    return [f"{sid}/{p.name}" for sid in cluster.server_folders() for p in incoming(cluster, sid)]


def stays(condition, seconds: float, every: float = 0.2) -> bool:
    """``condition()`` holds at every look for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(every)
    return bool(condition())


# ---------------------------------------------------------------- both proxies up


class CopyCounter(threading.Thread):
    """Counts the copies of some contents on the servers' disks, over and
    over until stopped: the fewest and the most seen of each."""

    def __init__(self, cluster: Cluster, contents: dict[str, bytes]) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.contents = contents
        self.fewest: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            counted = self.cluster.copies()
            for name, data in self.contents.items():
                n = counted.get(sha(data), 0)
                self.fewest[name] = min(n, self.fewest.get(name, n))
                self.most[name] = max(n, self.most.get(name, n))
            time.sleep(0.02)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


class TestBothProxiesUp:
    """Both proxies up all along: what one writes the other reads at once,
    and what both write lands exactly."""

    def test_a_write_through_one_proxy_is_seen_through_the_other_at_once(self, pair):
        """PUT through one, GET and STAT through the other right after; a
        new version and a DELETE through the other are seen by the first at
        once, though it has just read the file (what a proxy keeps of what
        it read is only a guess, which the catalog confirms)."""
        a, b = pair
        data = os.urandom(300_000)
        with a.wire() as wa, b.wire() as wb:
            r = wa.put("seen/file", data, 2)
            assert r.startswith("OK stored") and fields(r)["version"] == "1", r
            head, got = wb.get("seen/file")
            assert got == data and fields(head)["version"] == "1" and fields(head)["sha256"] == sha(data)
            st = wb.stat("seen/file")
            assert (st["size"], st["sha256"], st["version"], st["replicas"], st["have"]) == (
                str(len(data)), sha(data), "1", "2", "2")
            assert sorted(st["servers"].split(",")) == a.holders(data)

            # a new version through b, right after a read it through a: a reads the new one
            newer = os.urandom(200_000)
            assert wa.get("seen/file")[1] == data
            r = wb.put("seen/file", newer, 2)
            assert r.startswith("OK stored") and fields(r)["version"] == "2", r
            head, got = wa.get("seen/file")
            assert got == newer and fields(head)["version"] == "2"
            assert wa.stat("seen/file")["version"] == "2"

            assert wb.cmd("DELETE seen/file").startswith("OK deleted")
            assert wa.get("seen/file")[0].startswith("ERR notfound")
            assert wa.cmd("STAT seen/file").startswith("ERR notfound")
        assert names(a, "seen/") == names(b, "seen/") == []
        # and neither version stays on any disk
        assert poll(lambda: only(a.copies(), [data, newer]) == {}, 20), only(a.copies(), [data, newer])

    def test_a_small_file_read_through_one_proxy_and_changed_through_the_other_is_read_new(self, pair):
        """A small file is read whole from the copy a proxy remembers while
        the catalog is asked: a version written through the other proxy in
        between is the one read, every time, and a deleted file is gone."""
        a, b = pair
        with a.wire() as wa, b.wire() as wb:
            for i in range(20):
                writer, reader = (wb, wa) if i % 2 else (wa, wb)
                data = os.urandom(4096)  # the same size each time: only the bytes tell the versions apart
                r = writer.put("seen/small", data, 2)
                assert r.startswith("OK stored") and fields(r)["version"] == str(i + 1), r
                head, got = reader.get("seen/small")
                assert got == data and fields(head)["version"] == str(i + 1), (i, head)
                assert writer.get("seen/small")[1] == data
            assert wb.cmd("DELETE seen/small").startswith("OK deleted")
            assert wa.get("seen/small")[0].startswith("ERR notfound")

    def test_concurrent_puts_of_one_name_through_both_proxies(self, pair):
        """Rounds of PUTs of one name, four at once, two through each proxy:
        every one is stored under a version of its own, the highest one is what
        both proxies serve, and the servers keep its copies alone."""
        a, b = pair
        name = "race/one-name"
        stored: list[tuple[int, bytes]] = []
        replies: list[str] = []
        lock = threading.Lock()

        def put(cluster: Cluster, data: bytes, start: threading.Barrier) -> None:
            try:
                with cluster.wire() as w:
                    start.wait(10)
                    r = w.put(name, data, 2)
            except (OSError, WireError, threading.BrokenBarrierError) as e:
                r = f"no answer: {e!r}"
            with lock:
                replies.append(r)
                if r.startswith("OK stored"):
                    stored.append((int(fields(r)["version"]), data))

        for _ in range(4):
            start = threading.Barrier(4)
            threads = [threading.Thread(target=put, args=(c, os.urandom(150_000), start)) for c in (a, b, a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        assert all(r.startswith("OK stored") for r in replies) and len(replies) == 16, replies
        versions = sorted(v for v, _ in stored)
        assert versions == sorted(set(versions)), versions
        top, newest = max(stored)
        for c in (a, b):
            with c.wire() as w:
                head, got = w.get(name)
                assert got == newest and fields(head)["version"] == str(top), head
                st = w.stat(name)
                assert st["version"] == str(top) and st["have"] == "2"
        written = [data for _, data in stored]
        assert poll(lambda: only(a.copies(), written) == {sha(newest): 2}, 20), only(a.copies(), written)

    def test_replicas_up_and_down_through_different_proxies_land_exactly(self, pair):
        """REPLICAS asked through both proxies at once: up from 1 to 3, then
        down to 2. The copies on the disks are exactly the wanted count each
        time, never more on the way up, never fewer on the way down, and stay so
        (two reconcilers never make or drop the same copy twice)."""
        a, b = pair
        files = {f"count/{i}": os.urandom(400_000) for i in range(6)}
        proxies = {name: (a, b)[i % 2] for i, name in enumerate(files)}  # asked through one ...
        others = {name: (b, a)[i % 2] for i, name in enumerate(files)}  # ... and waited on through the other
        for name, data in files.items():
            with proxies[name].wire() as w:
                assert w.put(name, data, 1).startswith("OK stored")

        def asked(wanted: int) -> None:
            for name in files:  # every file asked at once, half through each proxy
                with proxies[name].wire() as w:
                    r = w.cmd(f"REPLICAS {name} {wanted}")
                    assert r.startswith(f"OK name={name} replicas={wanted}"), r
            for name in files:
                with others[name].wire() as w:
                    r = w.cmd(f"REPLICAS {name} {wanted} WAIT")
                    assert r.startswith("OK") and fields(r)["have"] == str(wanted), r

        counter = CopyCounter(a, files)
        counter.start()
        try:
            asked(3)
            assert poll(lambda: only(a.copies(), files) == each(files, 3), 20), only(a.copies(), files)
            assert stays(lambda: only(a.copies(), files) == each(files, 3), 1), only(a.copies(), files)
        finally:
            counter.stop()
        assert max(counter.most.values()) == 3, counter.most

        counter = CopyCounter(a, files)
        counter.start()
        try:
            asked(2)
            assert poll(lambda: only(a.copies(), files) == each(files, 2), 20), only(a.copies(), files)
            assert stays(lambda: only(a.copies(), files) == each(files, 2), 1.5), only(a.copies(), files)
        finally:
            counter.stop()
        assert min(counter.fewest.values()) == 2, counter.fewest
        for c in (a, b):
            with c.wire() as w:
                for name, data in files.items():
                    st = w.stat(name)
                    assert (st["replicas"], st["have"]) == ("2", "2"), st
                assert w.get("count/0")[1] == files["count/0"]


# ---------------------------------------------------------------- a proxy killed


@contextmanager
def commits_held(url: str) -> Iterator[None]:
    """While open, no new version can be committed: the test holds a lock on
    the catalog's table of files that lets reads through and no write."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("LOCK TABLE files IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


@pytest.mark.parametrize("moment", ["mid-body", "before-commit"])
def test_a_proxy_killed_mid_put_leaves_nothing_the_other_does_not_collect(tmp_path, postgres, moment):
    """kill -9 of a proxy in the middle of a PUT: through the other proxy
    nothing of it is visible, and once the killed one's lease has run out
    the other deletes what the upload left on the servers' disks: partial
    files (``mid-body``), or whole copies that were never committed
    (``before-commit``: the proxy is killed while its commit waits)."""
    with two_proxies(tmp_path, postgres, *SHORT_LEASE) as (a, b):
        kept = os.urandom(1 << 20)
        with b.wire() as w:
            assert w.put("kept", kept, 3).startswith("OK stored")
        data = os.urandom(16 << 20)
        w = a.wire()
        assert w.cmd(f"PUT torn {len(data)} 3").startswith("OK send")
        if moment == "mid-body":
            w.send(data[: 6 << 20])  # and no more: the rest comes slowly, or never
            assert poll(lambda: all(incoming_bytes(a, s) > 0 for s in a.servers), 10), leftovers(a)
            a.kill_proxy()
        else:
            with commits_held(a.url):
                w.send(data)
                assert poll(lambda: len(a.holders(data)) == 3, 15), "the copies were not written"
                a.kill_proxy()
                # held until the killed proxy is surely retired: its commit, if still
                # waiting in the database, must not go through
                time.sleep(LEASE + 1)
        w.close()

        with b.wire() as wb:
            assert wb.cmd("STAT torn").startswith("ERR notfound")
            assert wb.get("torn")[0].startswith("ERR notfound")
            assert [line.split()[-1] for line in wb.multi("LIST")] == ["kept"]
            assert fields(wb.cmd("STATUS"))["files"] == "1"
        # the leftovers go, deleted by b once a's lease is over; the file kept stays whole
        assert poll(lambda: a.copies() == Counter({sha(kept): 3}) and not leftovers(a), LEASE + 20), (
            a.copies(), leftovers(a), b.log(b.name)[-3000:])
        assert stays(lambda: a.copies() == Counter({sha(kept): 3}), 1)
        with b.wire() as wb:
            assert wb.get("kept")[1] == kept
            again = os.urandom(1 << 20)
            r = wb.put("torn", again, 2)
            assert r.startswith("OK stored"), r
            assert wb.get("torn")[1] == again
        assert b.proxy.poll() is None


def copying(cluster: Cluster, prefix: str) -> bool:
    """The proxy has begun a copy of a file named with ``prefix``."""
    return f"copying {prefix}" in cluster.log(cluster.name)


def test_a_proxy_killed_mid_re_replication_leaves_the_rest_to_the_other(tmp_path, postgres):
    """REPLICAS up on big files; the proxy making a copy is killed with
    SIGKILL once it has begun; the other proxy takes the work over after
    the lease and the copies on disk reach exactly the wanted count."""
    with two_proxies(tmp_path, postgres, *SHORT_LEASE) as (a, b):
        files = {f"grow/{i}": os.urandom(24 << 20) for i in range(3)}
        with a.wire() as w:
            for name, data in files.items():
                assert w.put(name, data, 1).startswith("OK stored")
            for name in files:
                assert w.cmd(f"REPLICAS {name} 3").startswith(f"OK name={name} replicas=3")

        def begun() -> Cluster | None:
            if not any(incoming(a, s) for s in a.servers):
                return None
            return next((c for c in (a, b) if copying(c, "grow/")), None)
        killed = poll(begun, 20, every=0.002)
        assert killed is not None, "no copy was begun"
        killed.kill_proxy()
        other = b if killed is a else a
        assert only(a.copies(), files) != each(files, 3), "every copy was made before the kill"

        assert poll(lambda: only(a.copies(), files) == each(files, 3) and not leftovers(a), LEASE + 40), (
            only(a.copies(), files), leftovers(a), other.log(other.name)[-3000:])
        assert stays(lambda: only(a.copies(), files) == each(files, 3), 1), only(a.copies(), files)
        with other.wire() as w:
            for name in files:
                st = w.stat(name)
                assert (st["replicas"], st["have"]) == ("3", "3"), st
            assert w.get("grow/0")[1] == files["grow/0"]


def test_a_proxy_that_stops_cleanly_hands_its_work_over_at_once(tmp_path, postgres):
    """SIGTERM to the proxy making copies: the other goes on with them
    without waiting for a lease (the default here, 30 s) to run out."""
    with two_proxies(tmp_path, postgres) as (a, b):
        # more files than a proxy copies at once: some are still to begin when it stops
        files = {f"handed/{i}": os.urandom(8 << 20) for i in range(8)}
        with a.wire() as w:
            for name, data in files.items():
                assert w.put(name, data, 1).startswith("OK stored")
            for name in files:
                assert w.cmd(f"REPLICAS {name} 3").startswith(f"OK name={name} replicas=3")
        stopping = poll(lambda: next((c for c in (a, b) if copying(c, "handed/")), None), 20, every=0.002)
        assert stopping is not None, "no copy was begun"
        stopping.kill_proxy(signal.SIGTERM)  # and waits until it has stopped
        assert only(a.copies(), files) != each(files, 3), "every copy was made before it stopped"
        other = b if stopping is a else a
        assert poll(lambda: only(a.copies(), files) == each(files, 3) and not leftovers(a), 20), (
            only(a.copies(), files), other.log(other.name)[-3000:])
        with other.wire() as w:
            for name in files:
                assert w.stat(name)["have"] == "3"


# ---------------------------------------------------------------- servers seen differently


def test_a_server_dying_with_one_proxy_left_is_replaced_by_it(tmp_path, postgres):
    """One proxy killed, then a server: the proxy left declares the server
    dead after --dead-after, and makes the missing copies on the others."""
    with two_proxies(tmp_path, postgres, "--dead-after", "1") as (a, b):
        files = {f"spread/{i}": os.urandom(1 << 20) for i in range(6)}
        for i, (name, data) in enumerate(files.items()):
            with (a, b)[i % 2].wire() as w:
                assert w.put(name, data, 2).startswith("OK stored")
        a.kill_proxy()
        victim = max(a.servers, key=lambda sid: len(a.blob_files(sid)))
        a.kill(victim)
        survivors = sorted(a.servers)
        assert poll(lambda: b.states()[victim] == "dead", 20), b.states()
        assert poll(lambda: only(a.copies(survivors), files) == each(files, 2), 30), (
            only(a.copies(survivors), files), b.log(b.name)[-3000:])
        with b.wire() as w:
            for name, data in files.items():
                st = w.stat(name)
                assert st["have"] == "2" and sorted(st["servers"].split(",")) == survivors, st
                assert w.get(name)[1] == data


class Relay:
    """A TCP relay on loopback to ``port``, that the test can cut: the link
    between two processes, broken while both stay up."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.closed = False
        self.links: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                near, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self.open:
                near.close()
                continue
            try:
                far = socket.create_connection(("127.0.0.1", self.target), 5)
            except OSError:
                near.close()
                continue
            with self.lock:
                self.links += [near, far]
            for src, dst in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        shut(src, dst)

    def cut(self) -> None:
        """Break every connection through it, and refuse new ones."""
        self.open = False
        with self.lock:
            links, self.links = self.links, []
        for s in links:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.thread.join(5)
        self.listener.close()


def test_a_server_one_proxy_sees_down_and_the_other_up_keeps_its_copies(tmp_path, postgres):
    """A server cut off from one proxy only: that proxy sees it down, the
    other up. Past --dead-after it is not dead, and its copies are neither
    made again elsewhere nor dropped (that a server gone for every proxy is
    dead after --dead-after is held above, with one proxy left). STATUS
    counts them healthy through either proxy, and a change that needs the
    server, asked through the proxy that cannot see it, is made by the other,
    keeping the copy both proxies can read."""
    url = postgres.database()
    a = Cluster(tmp_path, proxy_args=("--catalog", url, "--dead-after", "1"))
    b = a.add_proxy("proxy-b")
    relay = Relay(b.cport)
    try:
        a.start_proxy()
        b.start_proxy()
        a.start_server("s0", "--proxy", f"tcp:127.0.0.1:{a.cport}", "--proxy", f"tcp:127.0.0.1:{relay.port}")
        for sid in ("s1", "s2"):
            a.start_server(sid)
        a.wait_up(3)
        b.wait_up(3)
        # placement takes the roomiest servers, which on one shared disk depends on when each
        # last told its room: files go in until s0 holds some
        files: dict[str, bytes] = {}
        for i in range(60):
            name, data = f"seen/{i}", os.urandom(1 << 20)
            with (a, b)[i % 2].wire() as w:
                assert w.put(name, data, 2).startswith("OK stored")
            files[name] = data
            if i >= 5 and any("s0" in a.holders(d) for d in files.values()):
                break
        on_s0 = {name: data for name, data in files.items() if "s0" in a.holders(data)}
        assert on_s0
        disks = {sid: sorted(p.name for p in a.blob_files(sid)) for sid in a.servers}
        # each proxy started on an empty catalog, so it makes no moves until it has taken in the servers' blobs
        assert poll(lambda: all(any(said in p.log(p.name) for said in ("catalog rebuilt", "the catalog starts empty"))
                                for p in (a, b)), 20)

        def unchanged() -> bool:
            return {sid: sorted(p.name for p in a.blob_files(sid)) for sid in a.servers} == disks

        relay.cut()
        assert poll(lambda: b.states()["s0"] != "up", 10), b.states()

        def waiting() -> bool:
            return b.states()["s0"] != "dead" and a.states()["s0"] == "up" and unchanged()
        assert stays(waiting, 1 + 1.5, every=0.3), (a.states(), b.states(), disks)
        with b.wire() as w:
            for name, data in on_s0.items():
                assert w.get(name)[1] == data  # from the copy b can reach
            status = fields(w.cmd("STATUS"))
            assert (status["files"], status["under"], status["over"]) == (str(len(files)), "0", "0"), status
            # one copy too many, asked through b: only a sees both copies to drop one
            name, data = next(iter(on_s0.items()))
            assert w.cmd(f"REPLICAS {name} 1").startswith("OK")

        def one_copy() -> bool:
            return a.copies()[sha(data)] == 1
        assert poll(one_copy, 30), a.holders(data)
        assert stays(one_copy, 1.5)
        assert a.holders(data) != ["s0"]  # the copy kept is the one both proxies see
        for c in (a, b):
            with c.wire() as w:
                assert w.get(name)[1] == data
        with b.wire() as w:
            assert poll(lambda: fields(w.cmd("STATUS"))["over"] == "0", 10)

    finally:
        relay.close()
        stop_two(a, b)
        postgres.drop(url)


# ---------------------------------------------------------------- the database down


class Load(threading.Thread):
    """A client that PUTs new small files through one proxy and GETs those
    acknowledged, over and over until stopped. Any answer but ``OK`` or
    ``ERR unavailable``, any wrong byte, or a connection lost is noted as
    wrong; after an ERR it connects again."""

    def __init__(self, cluster: Cluster, prefix: str) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.prefix = prefix
        self.acked: dict[str, bytes] = {}
        self.replies: list[tuple[float, str, float]] = []  # (when, reply, seconds it took)
        self.wrong: list[str] = []
        self.done = threading.Event()
        self._wire: Wire | None = None

    def served_since(self, moment: float) -> int:
        return sum(1 for when, reply, _ in self.replies if when > moment and reply.startswith("OK"))

    def refused_since(self, moment: float) -> int:
        return sum(1 for when, reply, _ in self.replies if when > moment and reply.startswith("ERR unavailable"))

    def run(self) -> None:
        i = 0
        while not self.done.is_set():
            i += 1
            name, data = f"{self.prefix}/{i}", os.urandom(random.randrange(1000, 200_000))
            if self._ask(f"PUT {name}", lambda w: (w.put(name, data, 2), None)).startswith("OK stored"):
                self.acked[name] = data
            if self.acked:
                known = random.choice(list(self.acked))
                self._ask(f"GET {known}", lambda w: w.get(known), self.acked[known])
        if self._wire is not None:
            self._wire.close()

    def _ask(self, what: str, command, expected: bytes | None = None) -> str:
        """One command on the connection (made first if there is none): its
        reply, noted; the connection is dropped after anything but OK."""
        began = time.monotonic()
        try:
            if self._wire is None:
                self._wire = Wire(self.cluster.port, timeout=15)
            reply, got = command(self._wire)
        except (OSError, WireError) as e:
            reply, got = f"no answer: {e!r}", None
        self.replies.append((time.monotonic(), reply, time.monotonic() - began))
        if not reply.startswith(("OK", "ERR unavailable")):
            self.wrong.append(f"{what}: {reply} after {time.monotonic() - began:.1f} s")
        elif expected is not None and reply.startswith("OK") and got != expected:
            self.wrong.append(f"{what}: other bytes")
        if not reply.startswith("OK") and self._wire is not None:
            self._wire.close()
            self._wire = None
            time.sleep(0.05)
        return reply

    def stop(self) -> None:
        self.done.set()
        self.join(30)


def test_postgresql_stopped_under_load_and_started_again(tmp_path, postgres):
    """PostgreSQL stopped (longer than the lease) while clients PUT and GET
    through both proxies: every command answers, ``ERR unavailable`` at
    worst, within seconds; neither proxy falls over; once PostgreSQL is back
    both serve again by themselves, and every file acknowledged reads back
    whole through either proxy, its copies on the disks."""
    with two_proxies(tmp_path, postgres, *SHORT_LEASE) as (a, b):
        loads = [Load(a, "via-a"), Load(b, "via-b")]
        for load in loads:
            load.start()
        try:
            assert poll(lambda: all(len(load.acked) >= 5 for load in loads), 20), [load.wrong for load in loads]
            postgres.server.stop()
            down = time.monotonic()
            try:
                for c in (a, b):
                    reply, took = answer(c.port, "STAT via-a/1")
                    assert reply.startswith("ERR unavailable") and took < 5, (c.name, reply, took)
                assert poll(lambda: time.monotonic() - down > LEASE + 1
                            and all(load.refused_since(down) >= 3 for load in loads), 20), \
                    [load.replies[-3:] for load in loads]
            finally:
                postgres.start()
            back = time.monotonic()
            assert poll(lambda: all(load.served_since(back) >= 5 for load in loads), 30), (
                [load.replies[-3:] for load in loads], a.log(a.name)[-2000:], b.log(b.name)[-2000:])
        finally:
            for load in loads:
                load.stop()
        assert [load.wrong for load in loads] == [[], []]
        slowest = max(took for load in loads for _, _, took in load.replies)
        assert slowest < 5, slowest
        assert a.proxy.poll() is None and b.proxy.poll() is None
        acked = {name: data for load in loads for name, data in load.acked.items()}
        for c in (a, b):
            with c.wire() as w:
                for name, data in acked.items():
                    head, got = w.get(name)
                    assert got == data, (c.name, name, head)
        assert poll(lambda: only(a.copies(), acked) == each(acked, 2), 20), "copies on the disks"


def test_a_proxy_alone_answering_from_memory_reads_what_a_proxy_joining_writes(tmp_path, postgres):
    """Proxy A, alone on the catalog, answers lookups from the records it
    keeps; B starts and at once writes a new version, DELETEs a file and
    changes a wanted count: A's next answers show each change."""
    with two_proxies(tmp_path, postgres) as (a, b):
        b.kill_proxy(signal.SIGTERM)  # it leaves: A is alone
        assert poll(lambda: "no other proxy shares the catalog" in a.log(a.name), 20)
        first, second = os.urandom(50_000), os.urandom(60_000)
        with a.wire() as w:
            assert w.put("solo/f", first, 2).startswith("OK stored")
            assert w.put("solo/g", b"to delete", 2).startswith("OK stored")
            for _ in range(3):  # kept, and answered from memory
                assert w.get("solo/f")[1] == first and w.cmd("STAT solo/g").startswith("OK")
        b.start_proxy()
        b.wait_up(3)
        with b.wire() as wb, a.wire() as wa:
            assert wb.put("solo/f", second, 2).startswith("OK stored")
            assert wa.get("solo/f")[1] == second
            assert wb.cmd("DELETE solo/g").startswith("OK")
            assert wa.cmd("STAT solo/g").startswith("ERR notfound")
            assert wb.cmd("REPLICAS solo/f 3").startswith("OK")
            assert fields(wa.cmd("STAT solo/f"))["replicas"] == "3"
        assert "another proxy shares the catalog" in a.log(a.name)


def test_both_proxies_answer_from_memory_and_each_reads_what_the_other_just_wrote(tmp_path, postgres):
    """With both proxies up, each answers from the records it keeps (its
    log says so), and still a PUT, DELETE or REPLICAS through one shows in
    the very next command through the other, on names the other holds in
    memory (it wrote or read them just before)."""
    with two_proxies(tmp_path, postgres) as (a, b):
        for c in (a, b):
            assert poll(lambda: "lookups are answered from the records kept" in c.log(c.name), 20)
        with a.wire() as wa, b.wire() as wb:
            for i in range(20):
                writer, reader = (wa, wb) if i % 2 else (wb, wa)
                data = os.urandom(1000 + i)
                assert writer.put("both/f", data, 2).startswith("OK stored")
                assert reader.get("both/f")[1] == data
                assert reader.get("both/f")[1] == data  # kept now
                assert writer.cmd(f"REPLICAS both/f {1 + i % 3}").startswith("OK")
                assert fields(reader.cmd("STAT both/f"))["replicas"] == str(1 + i % 3)
                assert writer.put(f"both/g{i}", b"to delete", 2).startswith("OK stored")
                assert reader.cmd(f"STAT both/g{i}").startswith("OK")
                assert writer.cmd(f"DELETE both/g{i}").startswith("OK")
                assert reader.cmd(f"STAT both/g{i}").startswith("ERR notfound")


def test_a_proxy_restarted_with_rebuild_takes_in_a_lost_catalog_while_the_other_serves(tmp_path, postgres):
    """An old cluster's catalog is lost. Its servers come to two proxies that
    share another catalog: one restarted with --rebuild, the other serving
    on. Every file of the lost catalog comes back through both, with its
    copies on the disks exactly (the other proxy judged the servers the
    rebuild was taking in, and deleted what it had not taken in yet). The
    other proxy turns clients away too once its beat hears of the rebuild;
    a file written through it before that wins over the version the
    rebuild takes in (it was given version 1, the old one 3)."""
    old = Cluster(tmp_path, name="old")
    old.start_proxy()
    for sid in ("s0", "s1", "s2"):
        old.start_server(sid)
    lost: dict[str, bytes] = {f"lost/{i}": os.urandom(500 + i) for i in range(20)}
    lost.update({f"lost/one/{i}": os.urandom(64) for i in range(300)})
    try:
        old.wait_up(3)
        with old.wire() as w:
            for name, data in lost.items():
                assert w.put(name, data, 1 if "/one/" in name else 2).startswith("OK stored"), name
            for _ in range(3):
                overwritten = os.urandom(400)
                assert w.put("again", overwritten, 2).startswith("OK stored")
    finally:
        old.stop()
    (tmp_path / "old" / "catalog.sqlite").unlink()  # the catalog is lost

    url = postgres.database()
    a = Cluster(tmp_path, proxy_args=("--catalog", url))
    b = a.add_proxy("proxy-b")
    try:
        a.start_proxy()
        b.start_proxy()
        for sid in ("s3", "s4"):
            a.start_server(sid)
        a.wait_up(2)
        b.wait_up(2)
        new = {f"new/{i}": os.urandom(300) for i in range(5)}
        with b.wire() as w:
            for name, data in new.items():
                assert w.put(name, data, 2).startswith("OK stored")
        a.kill_proxy(signal.SIGTERM)
        a.start_proxy("--rebuild")
        assert poll(lambda: "rebuilding the catalog from the servers" in a.log(a.name), 20)
        # through the other proxy, before the old servers are back: taken until its beat hears of the rebuild
        again = os.urandom(300)
        with b.wire() as w:
            reply = w.put("again", again, 2)
        if reply.startswith("OK stored"):
            assert int(fields(reply)["version"]) > 3, reply
            new["again"] = again
        else:
            assert reply.startswith("ERR unavailable rebuilding"), reply

        def closed(c: Cluster) -> bool:
            with c.wire() as w:
                return w.cmd("STAT new/0").startswith("ERR unavailable rebuilding")
        assert poll(lambda: closed(b), 10)
        for sid in ("s0", "s1", "s2"):  # joined to both
            a.start_server(sid)
        a.wait_up(5)
        b.wait_up(5)
        expected = {**lost, **new} if "again" in new else {**lost, **new, "again": overwritten}
        wanted = {sha(data): (1 if "/one/" in name else 2) for name, data in expected.items()}
        contents = [*lost.values(), *new.values(), overwritten]
        wanted.setdefault(sha(overwritten), 0)
        assert poll(lambda: {**dict.fromkeys(wanted, 0), **only(a.copies(), contents)} == wanted, 40), \
            sorted(set(wanted.items()) - set(only(a.copies(), contents).items()))[:5]
        assert poll(lambda: not closed(a) and not closed(b), 30)
        for c in (a, b):
            with c.wire() as w:
                for name in [*sorted(lost)[::15], *sorted(new), "again"]:
                    head, got = w.get(name)
                    assert got == expected[name], (c.name, name, head)
                assert fields(w.cmd("STATUS"))["files"] == str(len(expected))
    finally:
        stop_two(a, b)
        postgres.drop(url)
