"""Hostile input: random bytes and mangled commands thrown at the text protocol,
on a live proxy and on a StringTransport."""

from __future__ import annotations

import os
import random
import re
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import task
from twisted.internet.testing import StringTransport

from deposito.protocols.text import DepotFactory
from deposito.tokens import Tokens
from tests.cluster import Cluster, fields, poll, sha
from tests.test_text_protocol import FakeDepot

# -- pieces of hostile input

COMMANDS = ["PUT", "GET", "STAT", "LIST", "DELETE", "REPLICAS", "SERVERS", "STATUS", "AUTH", "HELP",
            "QUIT", "put", "Get", "FROB", "", "P\x00T", "GET\t", "ÜBER"]
NUMBERS = ["0", "1", "2", "-1", "16", "17", "9" * 40, str(2 ** 63), str(2 ** 64 + 1), "1e9", "0x10", "+5",
           " 3", "٣", "１", "NaN", "inf", "3.5", "00000000000000000000001"]
NAMES = ["a", "fuzz/x", '"a b"', '"unterminated', '"bad \\q escape"', 'a"b', '"a"b', '""', '"\\"', "x" * 1025,
         "\x01ctl", "é", "a=b", "\\", '"' + "y" * 1024 + '"', "…", "\U0001f600", "/", "../../etc/passwd"]
RAW = [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\x00\x00\n", b"\r", b"\r\r\n", b"\x80abc",
       b"\xf4\x90\x80\x80", b"\xc0\xaf"]


def hostile_line(rng: random.Random) -> bytes:
    """One request line, usually wrong in some way; never the start of an upload."""
    kind = rng.randrange(8)
    if kind == 0:  # random bytes
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(300)))
    if kind == 1:  # near the 8 KiB limit, either side of it
        n = rng.choice([8186, 8190, 8191, 8192, 8193, 8194, 8300])
        return b"GET " + b"z" * (n - 4) + rng.choice([b"\n", b"\r\n"])
    if kind == 2:  # invalid UTF-8 and NULs inside a command
        return rng.choice(COMMANDS).encode() + b" " + rng.choice(RAW) + rng.choice(NAMES).encode() + b"\n"
    words = [rng.choice(COMMANDS)] + [rng.choice(NAMES + NUMBERS) for _ in range(rng.randrange(5))]
    if words[0].upper() in ("REPLICAS",) and rng.random() < 0.5:
        words.append("WAIT")
    line = " ".join(words).encode()
    if words[0].upper() == "PUT":  # no uploads here: a PUT line is made to fail before OK send
        line = b"PUT " + rng.choice(NAMES).encode() + b" " + rng.choice(["-1", "9" * 40, "x", "1e9"]).encode()
    if words[0].upper() == "QUIT":
        line = b"QUIT-NOT"
    return line + rng.choice([b"\n", b"\r\n", b"\n\n"])


class Drain(threading.Thread):
    """Reads a socket until it closes, so the proxy never waits on us."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.received = bytearray()

    def run(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                self.received += data
        except OSError:
            return


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 10)
        self.drain = Drain(self.sock)
        self.drain.start()

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:  # the proxy closed it (a line over the limit): fine
            return False

    def sync(self) -> bool:
        """Wait until the proxy has answered everything sent so far (False if it closed)."""
        mark = len(self.drain.received)
        if not self.send(b"STATUS\n"):
            return False
        return bool(poll(lambda: b"OK files=" in self.drain.received[mark:] or not self.drain.is_alive(), 10)) \
            and self.drain.is_alive()

    def close(self) -> bytes:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.drain.join(10)
        return bytes(self.drain.received)


@pytest.mark.slow
def test_a_live_proxy_survives_hundreds_of_hostile_requests(tmp_path):
    rng = random.Random(20261124)
    c = Cluster(tmp_path).start(2)
    try:
        with c.wire() as w:
            assert w.put("kept/file", b"kept bytes", 2).startswith("OK stored")
        sent = synced = 0
        transcripts = []
        for _ in range(8):
            conn = Connection(c.port)
            for _ in range(45):
                if not conn.drain.is_alive() or not conn.send(hostile_line(rng)):
                    transcripts.append(conn.close())  # closed by the proxy (a line over 8 KiB)
                    conn = Connection(c.port)
                sent += 1
            while not conn.sync():
                transcripts.append(conn.close())
                conn = Connection(c.port)
            synced += 1
            ending = rng.randrange(3)
            if ending == 0:  # an upload that announces a size, then stops early
                conn.send(b"PUT fuzz/early 100000 2\n")
                conn.send(os.urandom(rng.randrange(1, 50000)))
            elif ending == 1:  # a huge upload announced, a few bytes, gone
                conn.send(b"PUT fuzz/huge 1000000000000 1\n")
                conn.send(b"\x00" * 10)
            else:  # a half line
                conn.send(b"GET \"half")
            transcripts.append(conn.close())
        assert sent >= 300 and synced >= 4, (sent, synced)
        # every reply line the proxy gave was OK or ERR
        for raw in transcripts:
            lines, bad = replies(raw)
            assert not lines or lines[0].startswith(b"OK deposito "), lines[:1]
            assert bad == []
        assert sum(len(replies(raw)[0]) for raw in transcripts) >= 120  # some were cut by long lines
        assert c.proxy.poll() is None, "the proxy died"
        with c.wire() as w:
            assert len(w.multi("HELP")) >= 8
            data = os.urandom(3 << 20)
            r = w.put("fuzz/after", data, 2)
            assert r.startswith("OK stored") and fields(r)["sha256"] == sha(data), r
            head, got = w.get("fuzz/after")
            assert got == data, head
            assert w.get("kept/file")[1] == b"kept bytes"
            assert w.cmd("GET fuzz/early").startswith("ERR notfound")
            assert w.cmd("GET fuzz/huge").startswith("ERR notfound")
            names = [ln.split(None, 3)[3] for ln in w.multi("LIST")]
            assert names == ["fuzz/after", "kept/file"], names
        log = c.log("proxy")
        assert [ln for ln in log.splitlines() if "Unhandled" in ln or "Traceback" in ln] == []
        assert "the proxy hit an error" not in b"".join(transcripts).decode("utf-8", "replace")
    finally:
        c.stop()


# -- the protocol alone, on a StringTransport


SNIPPETS = [
    b"HELP\n", b"PUT a 5\n", b"PUT a 5 1\n", b"PUT a 5 2\n", b"hello", b"GET a\n", b"GET nope\n", b"STAT a\n",
    b"LIST\n", b"LIST a\n", b"SERVERS\n", b"STATUS\n", b"DELETE a\n", b"REPLICAS a 2\n", b"REPLICAS a 1 WAIT\n",
    b"AUTH t0k\n", b"AUTH nope\n", b"PUT \"a b\" 0\n", b"GET \"a b\"\n", b'GET "open\n', b"PUT a -1\n",
    b"PUT a " + b"9" * 30 + b"\n", b"\xff\xfe\n", b"GET \x00\n", b"\r\n", b"\n", b"z" * 8189 + b"\n",
    b"y" * 8200, b"PUT b 3\r\nab", b"QUIT\n", b"frob\n", b"GET " + b"x" * 1025 + b"\n",
]

chunks = st.lists(st.one_of(st.binary(max_size=120), st.sampled_from(SNIPPETS)), max_size=25)


def replies(raw: bytes) -> tuple[list[bytes], list[bytes]]:
    """Split a reply stream into reply lines, skipping GET's file bytes and
    multi-line bodies; returns (reply lines, lines that start with neither OK nor ERR)."""
    out, bad = [], []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n", pos)
        assert end >= 0, f"a reply line without CRLF: {raw[pos:pos + 80]!r}"
        ln = raw[pos:end]
        pos = end + 2
        out.append(ln)
        if not (ln == b"OK" or ln.startswith((b"OK ", b"ERR "))):
            bad.append(ln)
            continue
        m = re.fullmatch(rb"OK (\d+)", ln)
        if m:
            for _ in range(int(m.group(1))):
                end = raw.find(b"\r\n", pos)
                assert end >= 0
                pos = end + 2
            continue
        m = re.match(rb"OK (\d+) sha256=", ln)
        if m:
            pos += int(m.group(1))
    return out, bad


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks, st.booleans(), st.lists(st.integers(1, 50), min_size=1, max_size=5))
def test_text_protocol_never_raises_and_answers_only_ok_or_err(pieces, with_tokens, cuts):
    depot = FakeDepot()
    clock = task.Clock()
    proto = DepotFactory(depot, idle_timeout=300, stall_timeout=60,
                         tokens=Tokens(["t0k"]) if with_tokens else None).buildProtocol(None)
    proto.callLater = clock.callLater
    tr = StringTransport()
    proto.makeConnection(tr)
    stream = b"".join(pieces)
    # cut the stream into chunks of varying sizes, as TCP may deliver it
    pos, i = 0, 0
    while pos < len(stream) and not tr.disconnecting:
        step = cuts[i % len(cuts)] * (1 + (i % 7) * 40)
        proto.dataReceived(stream[pos:pos + step])
        pos += step
        i += 1
    clock.advance(61)  # a stalled upload times out
    proto.connectionLost(None)
    lines, bad = replies(tr.value())
    assert lines[0] == b"OK deposito 0.1.0 ready"
    assert bad == []
    assert all(not ln.startswith(b"ERR internal") for ln in lines), lines
    # every upload either got all its bytes or was aborted (none left dangling)
    for upload in depot.uploads:
        assert (upload in depot.aborted) != (len(upload.data) == upload.size), (upload.size, upload.data)
