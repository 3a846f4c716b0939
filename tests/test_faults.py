"""Faults on real processes: kill -9 at bad moments, a full disk, a network partition.

Every test checks outcomes a user would see: the bytes by sha256, the copies
counted on the servers' disks, and the proxy still serving afterwards.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.cluster import Cluster, Wire, fields, incoming, incoming_bytes, poll, serving_servers, sha

pytestmark = pytest.mark.slow


# -- helpers


def all_sids(cluster: Cluster) -> list[str]:
    return sorted(p.name for p in cluster.root.iterdir() if p.is_dir() and re.fullmatch(r"s\d+", p.name))


def leftovers(cluster: Cluster) -> dict[str, list[str]]:
    """Every blob or incoming file on any server's disk, by server."""
    out = {}
    for sid in all_sids(cluster):
        files = [p.name for p in cluster.blob_files(sid)] + [p.name for p in incoming(cluster, sid)]
        if files:
            out[sid] = files
    return out


def have(cluster: Cluster, name: str) -> int:
    with cluster.wire() as w:
        return int(w.stat(name)["have"])


def no_tracebacks(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "Traceback" in ln or "Unhandled" in ln]


# -- (a) the proxy killed in the middle of a PUT


@pytest.mark.parametrize("sent", ["part", "all"])
def test_proxy_killed_mid_put_leaves_no_version_and_no_blob(tmp_path, sent):
    """kill -9 of the proxy while a PUT streams: after a restart nothing of it is
    visible, and no blob of it stays on any disk (with ``all``, the bytes may have
    been committed just before the kill: then the version must be whole)."""
    c = Cluster(tmp_path).start(3)
    try:
        data = os.urandom(16 << 20)
        w = c.wire()
        assert w.cmd(f"PUT torn {len(data)} 2").startswith("OK send")
        if sent == "part":
            w.send(data[: 6 << 20])
            # the bytes reached both targets' disks before the kill
            assert poll(lambda: sum(incoming_bytes(c, s) > 0 for s in c.servers) == 2, 10)
        else:
            w.send(data)
        c.kill_proxy()
        w.close()
        c.start_proxy()
        c.wait_up(3)
        with c.wire() as w:
            head, got = w.get("torn")
            listed = w.multi("LIST")
            if got is None:
                assert head.startswith("ERR notfound"), head
                assert listed == []
                # the unfinished upload is garbage: nothing of it on any disk, in bounded time
                assert poll(lambda: leftovers(c) == {}, 15), leftovers(c)
            else:  # committed just before the kill: the whole file, on exactly 2 disks
                assert sent == "all"
                assert got == data and fields(head)["sha256"] == sha(data)
                assert [ln.split()[-1] for ln in listed] == ["torn"]
                assert poll(lambda: len(c.holders(data)) == 2 and not any(incoming(c, s) for s in c.servers), 15)
            # and the restarted proxy serves a new upload
            fresh = os.urandom(1 << 20)
            r = w.put("after-crash", fresh, 2)
            assert r.startswith("OK stored"), r
            assert w.get("after-crash")[1] == fresh
            assert len(c.holders(fresh)) == 2
        assert no_tracebacks(c.log("proxy")) == []
    finally:
        c.stop()


def test_servers_lose_orphans_reported_in_their_inventory_on_join(tmp_path):
    """A server down while a torn upload is cleaned up still loses its partial
    copy: its incoming/ is cleared at start and committed orphans it reports on
    join are deleted."""
    c = Cluster(tmp_path).start(3)
    try:
        data = os.urandom(2 << 20)
        with c.wire() as w:
            assert w.put("kept", data, 3).startswith("OK stored")
        holder = "s2"
        c.kill(holder)
        # an orphan blob behind the proxy's back: a committed copy of a file the catalog does not know
        [blob] = c.blob_files("s0")
        orphan_id = uuid.uuid4().hex
        target = c.server_dir(holder) / "blobs" / orphan_id[:2]
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(blob, target / orphan_id)
        meta = os.getxattr(blob, "user.deposito").decode()
        assert blob.name in meta
        (target / (orphan_id + ".meta")).write_text(meta.replace(blob.name, orphan_id))
        (c.server_dir(holder) / "incoming").mkdir(exist_ok=True)
        (c.server_dir(holder) / "incoming" / f"{orphan_id}.deadbeef.tmp").write_bytes(b"half")
        c.start_server(holder)
        c.wait_up(3)
        assert poll(lambda: not any(p.name == orphan_id for p in c.blob_files(holder)), 15), \
            c.log("proxy")[-2000:]
        assert incoming(c, holder) == []
        assert len(c.holders(data)) == 3  # the real copy is untouched
        with c.wire() as w:
            assert w.get("kept")[1] == data
    finally:
        c.stop()


# -- (b) a storage server killed while it receives a new copy


def test_server_killed_during_re_replication_still_converges(tmp_path):
    c = Cluster(tmp_path).start(4)
    try:
        data = os.urandom(32 << 20)
        with c.wire() as w:
            assert w.put("grow", data, 1).startswith("OK stored")
            [source] = c.holders(data)
            assert w.cmd("REPLICAS grow 3").startswith("OK name=grow replicas=3")
        # the copy being written shows up in a target's incoming/
        found = poll(lambda: [s for s in c.servers if s != source and incoming(c, s)], 15, every=0.002)
        assert found, "no copy was being written"
        victim = found[0]
        c.kill(victim)
        assert poll(lambda: have(c, "grow") == 3, 40), c.log("proxy")[-3000:]
        holders = c.holders(data)
        live = [s for s in holders if s != victim]
        assert len(live) == 3 and source in live
        with c.wire() as w:
            st = w.stat("grow")
            assert victim not in st["servers"].split(",") and st["replicas"] == "3"
            for _ in range(3):
                assert w.get("grow")[1] == data
        assert not any(incoming(c, s) for s in c.servers)
    finally:
        c.stop()


# -- (c) a holder killed under several concurrent readers


def test_concurrent_gets_survive_kill_9_of_a_holder(cluster):
    data = os.urandom(24 << 20)
    digest = sha(data)
    with cluster.wire() as w:
        assert w.put("shared", data, 2).startswith("OK stored")
    holders = cluster.holders(data)
    assert len(holders) == 2
    started = threading.Barrier(4, timeout=30)
    go = threading.Event()
    results: list[object] = [None] * 3

    def reader(i: int) -> None:
        try:
            w = Wire(cluster.port)
            w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            head = w.cmd("GET shared")
            assert head.startswith(f"OK {len(data)} "), head
            first = w.exact(1 << 20)
            started.wait()
            go.wait(30)
            rest = w.exact(len(data) - len(first))
            w.close()
            results[i] = sha(first + rest)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            results[i] = e
            started.abort()

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    try:
        started.wait()
        serving = poll(lambda: serving_servers(cluster), 5)
        assert serving and set(serving) <= set(holders), serving
        victim = serving[0]
        cluster.kill(victim)
    finally:
        go.set()
        for t in threads:
            t.join(60)
    assert results == [digest] * 3, results
    assert f"from {victim} failed at" in cluster.log("proxy")
    with cluster.wire() as w:  # still serving
        assert w.get("shared")[1] == data
    assert no_tracebacks(cluster.log("proxy")) == []


# -- (d) full disks


def disk_used(cluster: Cluster, sid: str) -> int:
    total = 0
    for p in cluster.blob_files(sid):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


def heartbeats_caught_up(cluster: Cluster) -> bool:
    """SERVERS reports for every server the bytes its disk holds (heartbeats lag up to 1 s)."""
    with cluster.wire() as w:
        used = {ln.split()[0]: int(fields(ln)["used"]) for ln in w.multi("SERVERS")}
    return all(used.get(s) == disk_used(cluster, s) for s in cluster.servers)


def test_full_disks_refuse_with_nospace_and_keep_every_listed_file_whole(tmp_path):
    c = Cluster(tmp_path, server_args=("--capacity", "2M")).start(3)
    try:
        stored: dict[str, bytes] = {}
        refusal = None
        size = 700_000
        with c.wire() as w:
            for i in range(20):
                assert poll(lambda: heartbeats_caught_up(c), 5)
                data = os.urandom(size)
                r = w.cmd(f"PUT fill{i} {len(data)} 2")
                if r.startswith("ERR"):
                    refusal = ("before any byte", r)
                    break
                assert r == f"OK send {len(data)}", r
                w.send(data)
                r = w.line()
                if r.startswith("ERR"):
                    refusal = ("after the bytes", r)
                    break
                assert r.startswith("OK stored") and fields(r)["sha256"] == sha(data), r
                stored[f"fill{i}"] = data
            assert refusal is not None, "6 MiB of disk took 20 x 1.4 MB"
            assert refusal[1].startswith("ERR nospace"), refusal
            # 3 disks of 2 MiB, 2 copies of 700 kB each: 6 copies fit, so 3 files
            assert len(stored) == 3, (len(stored), refusal)
            # the connection is still usable after the refusal
            assert len(w.multi("HELP")) > 5
            refused = f"fill{len(stored)}"
            assert w.cmd(f"GET {refused}").startswith("ERR notfound")
            listed = [ln.split()[-1] for ln in w.multi("LIST fill")]
            assert sorted(listed) == sorted(stored)
            for name, data in stored.items():
                head, got = w.get(name)
                assert got is not None and sha(got) == sha(data), (name, head)
                assert len(c.holders(data)) == 2
        # nothing half-written stays, and no disk holds more than its capacity
        assert poll(lambda: not any(incoming(c, s) for s in c.servers), 10)
        assert all(disk_used(c, s) <= 2 << 20 for s in c.servers)
        assert sum(len(c.blob_files(s)) for s in c.servers) == 2 * len(stored)
        # the proxy keeps serving: free some room, and the next PUT fits again
        with c.wire() as w:
            for name in list(stored)[:1]:
                assert w.cmd(f"DELETE {name}").startswith("OK deleted")
                del stored[name]
            again = os.urandom(size)

            def fits() -> bool:
                r = w.put("after-full", again, 2)
                assert r.startswith(("OK stored", "ERR nospace")), r
                return r.startswith("OK stored")
            assert poll(fits, 15, every=0.5), c.log("proxy")[-2000:]
            assert w.get("after-full")[1] == again
        assert no_tracebacks(c.log("proxy")) == []
        for sid in c.servers:
            assert no_tracebacks(c.log(sid)) == []
    finally:
        c.stop()


def test_put_right_after_the_disks_filled_answers_nospace(tmp_path):
    """Two servers of 1 MiB hold one 700 kB file each; a second one, sent before
    the next heartbeat, must be refused with ERR nospace, not a false unavailable."""
    c = Cluster(tmp_path, server_args=("--capacity", "1M")).start(2)
    try:
        size = 700_000
        answer = None
        with c.wire() as w:
            for attempt in range(5):
                assert poll(lambda: heartbeats_caught_up(c), 5)
                first, second = os.urandom(size), os.urandom(size)
                assert w.put(f"a{attempt}", first, 2).startswith("OK stored")
                r = w.cmd(f"PUT b{attempt} {size} 2")
                if r.startswith("OK send"):  # placed on stale heartbeats: the case under test
                    w.send(second)
                    answer = w.line()
                    break
                assert r.startswith("ERR nospace"), r  # a heartbeat came in between: try again
                assert w.cmd(f"DELETE a{attempt}").startswith("OK deleted")
                assert poll(lambda: all(disk_used(c, s) == 0 for s in c.servers), 10)
            if answer is None:
                return  # placement never went ahead of the disks: nothing to check
            # whatever the code, nothing of the refused file is kept and the proxy serves on
            assert w.cmd(f"GET b{attempt}").startswith("ERR notfound")
            assert poll(lambda: c.holders(second) == [] and not any(incoming(c, s) for s in c.servers), 10)
            assert w.get(f"a{attempt}")[1] == first
            assert answer.startswith("ERR nospace"), answer
    finally:
        c.stop()


def test_a_bigger_file_than_any_disk_is_refused_before_any_byte(tmp_path):
    c = Cluster(tmp_path, server_args=("--capacity", "1M")).start(2)
    try:
        with c.wire() as w:
            r = w.cmd(f"PUT huge {2 << 20} 1")
            assert r.startswith("ERR nospace"), r
            assert w.cmd("LIST").startswith("OK 0")
            assert w.put("small", b"fits", 2).startswith("OK stored")
    finally:
        c.stop()


# -- (e) a corrupt copy on every holder but one: covered by
# tests/test_convergence.py::test_flipped_bytes_are_never_served_and_the_copy_is_replaced


# -- a network partition, in a private network namespace (needs root and `ip netns`)
#
# Every process of the cluster runs in a fresh namespace (the test's own thread
# enters it, and its children inherit it); the partitioned server uses
# 127.0.0.3 for its blob port and its cluster connection, and the cut is two
# blackhole policy-routing rules for that address. Deleting the namespace
# removes every rule, whatever happens.

CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


class Netns:
    def __init__(self) -> None:
        self.name = f"deposito-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.home: int | None = None

    def __enter__(self) -> Netns:
        for args in (("netns", "add", self.name), ("-n", self.name, "link", "set", "lo", "up"),
                     # local routes after the rules that can cut an address
                     ("-n", self.name, "rule", "add", "pref", "100", "lookup", "local"),
                     ("-n", self.name, "rule", "del", "pref", "0", "lookup", "local")):
            r = _ip(*args)
            if r.returncode != 0:
                self.close()
                raise OSError(f"ip {' '.join(args)}: {r.stderr.strip()}")
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(fd)
        except OSError:
            self.close()
            raise
        finally:
            os.close(fd)
        return self

    def cut(self, addr: str) -> None:
        for pref, direction in (("10", "to"), ("11", "from")):
            r = _ip("-n", self.name, "rule", "add", "pref", pref, direction, addr, "blackhole")
            assert r.returncode == 0, r.stderr

    def heal(self) -> None:
        for pref in ("10", "11"):
            _ip("-n", self.name, "rule", "del", "pref", pref)

    def close(self) -> None:
        if self.home is not None:
            _setns(self.home)
            os.close(self.home)
            self.home = None
        _ip("netns", "del", self.name)

    def __exit__(self, *exc: object) -> None:
        self.close()


def netns_unusable() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2's `ip netns`"
    if not os.path.exists("/proc/thread-self/ns/net"):
        return "no /proc/thread-self/ns/net"
    try:
        with Netns():
            pass
    except OSError as e:
        return f"network namespaces do not work here: {e}"
    return None


def test_partitioned_server_is_replaced_and_its_extra_copies_go_when_it_heals(tmp_path):
    why = netns_unusable()
    if why:
        pytest.skip(why)
    with Netns() as ns:
        c = Cluster(tmp_path, proxy_args=("--dead-after", "2"))
        try:
            c.start_proxy()
            c.start_server("s0")
            c.start_server("s1")
            c.start_server("s2", "--port", "tcp:0:interface=127.0.0.3",
                           "--proxy", f"tcp:host=127.0.0.1:port={c.cport}:bindAddress=127.0.0.3")
            c.wait_up(3)
            with c.wire() as w:
                assert next(ln for ln in w.multi("SERVERS") if ln.startswith("s2 ")).split()[1].startswith("127.0.0.3:")
                files = {f"part/{i}": os.urandom(400_000 + i) for i in range(3)}
                for name, data in files.items():
                    assert w.put(name, data, 3).startswith("OK stored")
            assert all(c.holders(d) == ["s0", "s1", "s2"] for d in files.values())
            c.start_server("s3")
            c.wait_up(4)

            ns.cut("127.0.0.3")
            started = time.monotonic()
            for name, data in files.items():  # readers never notice
                with c.wire() as w:
                    assert w.get(name)[1] == data
            assert time.monotonic() - started < 20
            assert poll(lambda: c.states()["s2"] == "dead", 15)
            assert poll(lambda: all(have(c, n) == 3 for n in files), 20), c.log("proxy")[-3000:]
            for data in files.values():
                assert c.holders(data) == ["s0", "s1", "s2", "s3"]  # s2 still has its old copies
            during = os.urandom(300_000)
            with c.wire() as w:
                assert w.put("part/during", during, 3).startswith("OK stored")
            assert c.holders(during) == ["s0", "s1", "s3"]
            assert c.servers["s2"].poll() is None  # alive all along, only cut off

            ns.heal()
            assert poll(lambda: c.states()["s2"] == "up", 40), c.log("s2")[-2000:]
            files["part/during"] = during

            def settled() -> bool:
                with c.wire() as w:
                    st = fields(w.cmd("STATUS"))
                return all(st[k] == "0" for k in ("under", "over", "repairs_queued", "repairs_running"))
            assert poll(settled, 20), c.log("proxy")[-3000:]
            time.sleep(0.5)  # deletes that were just sent reach the disks
            with c.wire() as w:
                for name, data in files.items():
                    assert w.get(name)[1] == data
                catalog = {n: sorted(w.stat(n)["servers"].split(",")) for n in files}
            disks = {n: c.holders(d) for n, d in files.items()}
            lying = {n: (catalog[n], disks[n]) for n in files if catalog[n] != disks[n]}
            # the returning copies are extras: every file ends with exactly 3 copies, as the catalog says
            assert lying == {} and all(len(d) == 3 for d in disks.values()), (catalog, disks)
            assert no_tracebacks(c.log("proxy")) == []
        finally:
            c.stop()


def test_the_catalog_removed_under_a_running_proxy_stops_changes_and_a_restart_rebuilds_it(cluster):
    """The proxy's catalog file deleted while it runs: a PUT is refused
    (it would be acknowledged into a file no longer on disk) saying what to
    do, a GET of a file stored before still answers, and once the proxy is
    restarted the catalog is rebuilt from the servers, with that file."""
    data = os.urandom(200_000)
    with cluster.wire() as w:
        assert w.put("before", data, 2).startswith("OK stored")
        assert w.get("before")[1] == data
    for leftover in (cluster.root / cluster.name).glob("catalog.sqlite*"):
        leftover.unlink()
    with cluster.wire() as w:
        reply = w.put("after", b"x" * 1000, 2)
        assert reply.startswith("ERR unavailable") and "removed or replaced" in reply, reply
        reply, got = w.get("before")
        assert got == data, reply
        listed = w.cmd("LIST")
        assert listed.startswith("ERR unavailable") and "removed or replaced" in listed, listed
    assert poll(lambda: "this proxy's beats are not recorded (the catalog" in cluster.log(cluster.name), 10)

    cluster.kill_proxy(signal.SIGTERM)
    cluster.start_proxy()
    cluster.wait_up(3)
    with cluster.wire() as w:
        assert poll(lambda: w.get("before")[1] == data, 30)
        assert w.put("after", b"x" * 1000, 2).startswith("OK stored")


def test_a_rebuild_on_the_kept_catalog_keeps_the_version_a_failed_put_would_have_replaced(cluster):
    """Version 2 of a file fails (a server killed mid-PUT: 3 copies cannot be
    had) and the proxy is killed before its copies are deleted; restarted
    with --rebuild, it finds them on the servers, but its catalog knows
    they are garbage: the name keeps version 1, with its 3 copies, and
    version 2's copies go. (Before, version 2 was taken in as the newest,
    version 1 made garbage, and version 2's copies deleted as garbage too:
    nothing left.) Tried until the proxy is killed before its collector
    deleted the failed copies, as it nearly always is."""
    for attempt in range(3):
        name = f"y{attempt}"
        v1, v2 = os.urandom(2 << 20), os.urandom(6 << 20)
        with cluster.wire() as w:
            assert w.put(name, v1, 3).startswith("OK stored")
        w = cluster.wire()
        assert w.cmd(f"PUT {name} {len(v2)} 3").startswith("OK send")
        w.send(v2[: 3 << 20])
        time.sleep(0.3)
        cluster.kill("s1")
        w.send(v2[3 << 20:])
        reply = w.line()
        cluster.kill_proxy()
        w.close()
        assert reply.startswith("ERR unavailable"), reply
        left = cluster.holders(v2)
        cluster.start_server("s1")
        cluster.start_proxy("--rebuild")
        cluster.wait_up(3)
        with cluster.wire() as w:
            assert poll(lambda: not w.cmd(f"STAT {name}").startswith("ERR unavailable rebuilding"), 30)
            reply, got = w.get(name)
            assert got == v1, reply
        assert poll(lambda: len(cluster.holders(v1)) == 3 and cluster.holders(v2) == [], 30), \
            (cluster.holders(v1), cluster.holders(v2))
        if left:
            assert len(left) == 2
            return
    raise AssertionError("the failed PUT's copies were deleted before the proxy was killed, three times")


def backed_up(cluster: Cluster) -> Path:
    """The proxy's catalog copied aside while it is stopped (once its first
    start's own rebuild is over: a backup taken during it would rebuild
    again when put back), then the proxy started again; the copy's folder."""
    assert poll(lambda: re.search("the catalog starts empty|catalog rebuilt", cluster.log(cluster.name)), 30)
    cluster.kill_proxy(signal.SIGTERM)
    backup = cluster.root / "backup"
    backup.mkdir()
    for f in (cluster.root / cluster.name).glob("catalog.sqlite*"):
        shutil.copy(f, backup / f.name)
    cluster.start_proxy()
    cluster.wait_up(3)
    return backup


def put_back(cluster: Cluster, backup: Path) -> None:
    """The proxy stopped and its catalog replaced by the copy in ``backup``."""
    cluster.kill_proxy(signal.SIGTERM)
    for f in (cluster.root / cluster.name).glob("catalog.sqlite*"):
        f.unlink()
    for f in backup.iterdir():
        shutil.copy(f, cluster.root / cluster.name / f.name)


def test_a_catalog_backup_put_back_with_rebuild_loses_nothing_and_lists_no_copy_that_is_gone(cluster):
    """README's way back to a backup of the catalog: put it in place and
    start with --rebuild. The files written since come back (a new name, a
    newer version), and a file deleted since, whose copies are gone, is
    listed with none (it was listed with the copies the backup knew, as
    healthy, until a read found otherwise)."""
    old, new, gone, later = (os.urandom(300_000 + i) for i in range(4))
    with cluster.wire() as w:
        assert w.put("kept", old, 2).startswith("OK stored")
        assert w.put("gone", gone, 2).startswith("OK stored")
    backup = backed_up(cluster)
    with cluster.wire() as w:
        assert w.put("kept", new, 2).startswith("OK stored")
        assert w.put("later", later, 2).startswith("OK stored")
        assert w.cmd("DELETE gone").startswith("OK deleted")
    assert poll(lambda: cluster.holders(gone) == [] and cluster.holders(old) == [], 30)
    put_back(cluster, backup)
    cluster.start_proxy("--rebuild")
    cluster.wait_up(3)
    with cluster.wire() as w:
        assert poll(lambda: not w.cmd("STAT kept").startswith("ERR unavailable rebuilding"), 30)
        assert w.get("kept")[1] == new and w.get("later")[1] == later
        assert poll(lambda: w.stat("gone")["have"] == "0", 15), w.stat("gone")
        assert [line.split()[2] for line in w.multi("LIST gone")] == ["0"]
    assert len(cluster.holders(new)) == 2 and len(cluster.holders(later)) == 2


def test_an_older_catalog_put_back_without_rebuild_deletes_no_blob_written_since(cluster):
    """A backup of the catalog started on as it is (no --rebuild): the
    servers' blobs of the files written since the backup are unknown to it.
    It took them for garbage and deleted them: every file written since was
    lost. It asks the servers what they are, leaves them alone, and says
    to restart with --rebuild, which takes them in."""
    before, later, newer = (os.urandom(200_000 + i) for i in range(3))
    with cluster.wire() as w:
        assert w.put("kept", before, 2).startswith("OK stored")
    backup = backed_up(cluster)
    with cluster.wire() as w:
        assert w.put("later", later, 2).startswith("OK stored")
        assert w.put("kept", newer, 2).startswith("OK stored")
    assert poll(lambda: cluster.holders(before) == [], 30)  # the replaced version's copies went
    put_back(cluster, backup)
    cluster.start_proxy()
    cluster.wait_up(3)
    assert poll(lambda: "blobs of versions this catalog never gave out" in cluster.log(cluster.name), 30)
    time.sleep(3)  # the collector's turn, had they been garbage
    assert len(cluster.holders(later)) == 2 and len(cluster.holders(newer)) == 2
    cluster.kill_proxy(signal.SIGTERM)
    cluster.start_proxy("--rebuild")
    cluster.wait_up(3)
    with cluster.wire() as w:
        assert poll(lambda: not w.cmd("STAT kept").startswith("ERR unavailable rebuilding"), 30)
        assert w.get("later")[1] == later and w.get("kept")[1] == newer
