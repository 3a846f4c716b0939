"""The proxy's HTTP side: status page, /metrics, JSON API, downloads, JSON logs.

Fast tests on the pieces (range parsing, the event log, the page's HTML),
then a live cluster with ``--http`` read by HTTP, by prometheus_client's
parser, and by a real headless Chromium, whose screenshot is kept under
``build/test-artifacts/`` (or ``$DEPOSITO_ARTIFACTS``).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from deposito import proxy_tap
from deposito.events import PUT_PHASES, EventLog, Metrics, json_log
from deposito.placement import read_order
from deposito.proxy import ProxyService
from deposito.roster import Member
from deposito.statuspage import render_page
from deposito.web import parse_range
from tests.cluster import TWISTD, Cluster, free_port, poll, sha

ARTIFACTS = Path(os.environ.get("DEPOSITO_ARTIFACTS") or Path(__file__).resolve().parent.parent / "build"
                 / "test-artifacts")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


# -- the pieces


@pytest.mark.parametrize("header,size,expected", [
    (None, 10, None),
    ("bytes=0-0", 10, (0, 0)),
    ("bytes=2-5", 10, (2, 5)),
    ("bytes=4-", 10, (4, 9)),
    ("bytes=-3", 10, (7, 9)),
    ("bytes=-30", 10, (0, 9)),
    ("bytes=5-100", 10, (5, 9)),
    ("bytes=10-", 10, False),
    ("bytes=-0", 10, False),
    ("bytes=5-2", 10, None),  # invalid: ignored
    ("bytes=0-1,4-5", 10, None),  # several ranges: the whole file
    ("items=0-1", 10, None),
    ("bytes=0-", 0, None),  # an empty file is sent whole
    ("bytes=" + "9" * 5000 + "-", 10, False),  # positions past any size, however long
    ("bytes=2-" + "9" * 5000, 10, (2, 9)),
    ("bytes=-" + "9" * 5000, 10, (0, 9)),
    ("bytes=" + "0" * 5000 + "2-" + "0" * 30 + "5", 10, (2, 5)),  # leading zeros count for nothing
    ("bytes=-" + "0" * 40 + "3", 10, (7, 9)),
    ("bytes=\u0663-", 10, None),  # digits are ASCII digits
])
def test_parse_range(header, size, expected):
    assert parse_range(header, size) == expected


def test_event_log_keeps_the_last_tagged_events_newest_first():
    events = EventLog(size=3)
    log = Logger(namespace="deposito.roster.Roster", observer=events)
    log.info("not a cluster event {x}", x=1)
    for i in range(5):
        log.info("storage server {id} joined", id=f"s{i}", event="join")
    Logger(namespace="other.library", observer=events).info("x", event="join")
    log.info("storage server {id} joined", id="s4", event="join")  # the same again: counted, not kept twice
    recent = events.recent()
    assert [e.message for e in recent] == ["storage server s4 joined", "storage server s3 joined",
                                           "storage server s2 joined"]
    assert recent[0].kind == "join" and recent[0].fields == {"id": "s4"} and recent[0].time > 1e9
    assert events.counts["join"] == 6
    assert recent[0].repeats == 2 and recent[1].repeats == 1
    assert recent[0].as_json()["id"] == "s4"


def test_events_move_the_counters():
    events, metrics = EventLog(), Metrics()
    events.listeners.append(metrics.event)
    log = Logger(namespace="deposito.reconciler.Reconciler", observer=events)
    log.warn("storage server {id} found blob {blob} corrupt: {why}", id="s0", blob="b", why="crc", event="corrupt")
    log.info("inventory of {id}: {missing} copies missing", id="s1", missing=2, event="inventory")
    log.info("made a copy of {name} on {id}", name="f", id="s2", event="repaired")
    log.info("dropping the copy of {name} on {id}", name="f", id="s0", event="drop")
    value = metrics.registry.get_sample_value
    assert value("deposito_bad_copies_total", {"reason": "corrupt"}) == 1
    assert value("deposito_bad_copies_total", {"reason": "missing"}) == 2
    assert value("deposito_repairs_done_total", {"action": "copy"}) == 1
    assert value("deposito_repairs_done_total", {"action": "drop"}) == 1
    assert value("deposito_events_total", {"kind": "inventory"}) == 1
    assert events.rate.per_minute(events.recent()[0].time) == 2.0


STATUS = {"files": 3, "bytes": 5 << 20, "servers_up": 1, "servers_down": 1, "under": 2, "over": 0,
          "repairs_queued": 1, "repairs_running": 1, "copies_wanted": 6, "copies_healthy": 3,
          "repairs_done": 4, "repairs_per_minute": 2.0}


class Text(HTMLParser):
    """What a person reads on a page: its text, without tags, styles or scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("style", "script", "title")

    def handle_endtag(self, tag):
        self._skip -= tag in ("style", "script", "title")

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.parts.append(" ".join(data.split()))

    @classmethod
    def of(cls, page: str) -> str:
        p = cls()
        p.feed(page)
        return " | ".join(p.parts)


def test_page_shows_states_and_escapes_what_users_named():
    servers = [Member("s0", "rack-a", "10.0.0.1", 4000, capacity=100 << 20, used=25 << 20, blobs=7, state="up"),
               Member("s1", "rack-b", "10.0.0.2", 4000, capacity=100 << 20, used=95 << 20, state="dead")]
    events = EventLog()
    log = Logger(namespace="deposito.reconciler.Reconciler", observer=events)
    log.info("made a copy of {name} on {id}", name="<script>alert(1)</script>", id="s0", event="repaired")
    for _ in range(3):
        log.warn("cannot add a copy of {name}: {why}", name="f", why="no room", event="repair_failed")
    page = render_page(STATUS, servers, events.recent(), 1.8e9).decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<meta http-equiv="refresh"' in page and 'name="viewport"' in page
    text = Text.of(page)
    assert "1 server not up; 2 files below the wanted copies." in text
    assert "s0 | 10.0.0.1:4000 | up | rack-a | 25.0 MiB of 100.0 MiB (25%) | 7" in text
    assert "s1 | 10.0.0.2:4000 | dead | rack-b | 95.0 MiB of 100.0 MiB (95%)" in text
    assert "copy made" in text and "repair failed | cannot add a copy of f: no room | \u00d73" in text
    assert 'style="width:25.0%"' in page and 'class="full" style="width:95.0%"' in page


def test_http_is_off_unless_given_and_checked_like_the_other_ports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where --data's default is made
    o = proxy_tap.Options()
    o.parseOptions([])
    assert o["http"] is None
    o = proxy_tap.Options()
    o.parseOptions(["--http", "tcp:7080:interface=127.0.0.1"])
    assert o["http"] == "tcp:7080:interface=127.0.0.1"
    with pytest.raises(SystemExit) as e:
        proxy_tap.Options().parseOptions(["--http", "nonsense:1"])
    assert "--http" in str(e.value).splitlines()[0]

    reactor = MemoryReactorClock()

    def ports(http):
        svc = ProxyService(reactor, str(tmp_path / f"p{http}"), endpoints.TCP4ServerEndpoint(reactor, 0),
                           endpoints.TCP4ServerEndpoint(reactor, 0), 2,
                           http_endpoint=endpoints.TCP4ServerEndpoint(reactor, 0) if http else None)
        svc.db.catalog.close()
        return len(list(svc))

    assert (ports(False), ports(True)) == (2, 3)


def test_json_log_writes_one_event_per_line(tmp_path, monkeypatch):
    path = tmp_path / "proxy.json"
    monkeypatch.setenv("DEPOSITO_JSON_LOG", str(path))
    observer = json_log()
    Logger(namespace="deposito.roster.Roster", observer=observer).info(
        "storage server {id} joined", id="s0", event="join")
    line = json.loads(path.read_text().splitlines()[0])
    assert (line["id"], line["event"], line["log_format"]) == ("s0", "join", "storage server {id} joined")


# -- a live cluster


def fetch(port: int, path: str, method: str = "GET", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_json(port: int, path: str):
    status, headers, body = fetch(port, path)
    assert status == 200 and headers["content-type"].startswith("application/json"), (status, body[:300])
    return json.loads(body)


def L(**labels: str) -> frozenset:
    """A sample's labels, as :func:`metrics` keys them."""
    return frozenset(labels.items())


def metrics(port: int) -> dict:
    """``{(name, frozenset(labels)): value}`` from /metrics, by prometheus_client's parser."""
    status, headers, body = fetch(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


FILES = {
    "web/small.txt": b"hello deposito\n",
    "web/empty": b"",
    "web/dir/big file.bin": os.urandom(3 << 20 | 5),
    "web/ünïcode & \"quotes\"?#.txt": b"odd name\n",
}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """Three servers of 64 MiB each, a proxy with --http, a few files."""
    port = free_port()
    c = Cluster(tmp_path_factory.mktemp("web"), proxy_args=("--http", f"tcp:{port}:interface=127.0.0.1"),
                server_args=("--capacity", "64M"))
    c.http = port
    c.start(3)
    try:
        with c.wire() as w:
            for name, data in FILES.items():
                assert w.put(name, data, 2).startswith("OK stored"), name
        yield c
    finally:
        c.stop()


@pytest.mark.slow
def test_api_gives_the_same_facts_as_the_text_protocol(web):
    with web.wire() as w:
        status_line = dict(kv.split("=") for kv in w.cmd("STATUS").split()[1:])
        servers_lines = w.multi("SERVERS")
        st = w.stat("web/small.txt")
    status = get_json(web.http, "/api/status")
    for key, value in status_line.items():
        assert status[key] == int(value), key
    assert status["files"] == len(FILES) and status["copies_wanted"] == status["copies_healthy"] == 2 * len(FILES)
    assert {e["id"] for e in status["events"] if e["kind"] == "join"} == {"s0", "s1", "s2"}
    assert all(e["time"] > 1e9 and e["message"] for e in status["events"])

    servers = get_json(web.http, "/api/servers")["servers"]
    assert [s["id"] for s in servers] == ["s0", "s1", "s2"]
    for s, line in zip(servers, servers_lines):
        sid, address, state, *_ = line.split()
        assert (s["id"], s["address"], s["state"]) == (sid, address, state)
        assert s["capacity"] == 64 << 20 and s["zone"] == f"z{sid}"

    files = get_json(web.http, "/api/files?prefix=" + quote("web/dir/"))["files"]
    assert [f["name"] for f in files] == ["web/dir/big file.bin"]
    assert files[0]["sha256"] == sha(FILES["web/dir/big file.bin"]) and files[0]["have"] == 2
    assert files[0]["download"] == "/files/web%2Fdir%2Fbig%20file.bin"
    every = get_json(web.http, "/api/files")["files"]
    assert sorted(f["name"] for f in every) == sorted(FILES)
    paged, after = [], ""
    while after is not None:
        body = get_json(web.http, f"/api/files?limit=1&after={quote(after)}")
        assert len(body["files"]) <= 1
        paged += body["files"]
        after = body["next"]
    assert paged == every
    small = next(f for f in every if f["name"] == "web/small.txt")
    assert (small["size"], small["version"], small["wanted"], ",".join(small["servers"])) == (
        int(st["size"]), int(st["version"]), int(st["replicas"]), st["servers"])


def test_files_api_pages_with_after_limit_and_next(tmp_path):
    from twisted.internet import task
    from twisted.web.test.requesthelper import DummyRequest

    from deposito.catalog import Catalog
    from deposito.web import FilesAPI
    from tests.test_listing import CatalogDepot, fill

    catalog = Catalog(str(tmp_path / "proxy"))
    try:
        names = [f"d/{i:02d}" for i in range(25)] + ["d e", "e"]
        fill(catalog, names, servers=("s1", "s2"))
        depot = CatalogDepot(catalog.backend.path, task.Clock())
        api = FilesAPI(depot, EventLog(), None, task.Clock())

        def page(**args):
            request = DummyRequest([b""])
            request._disconnected = False
            request.args = {k.encode(): [v.encode()] for k, v in args.items()}
            api.render_GET(request)
            assert request.finished, "the page did not finish at once"
            return request.responseCode or 200, json.loads(b"".join(request.written))

        code, body = page(prefix="d/", limit="10")
        assert code == 200 and [f["name"] for f in body["files"]] == names[:10] and body["next"] == "d/09"
        assert body["files"][0] == {"name": "d/00", "size": 4, "version": 1, "sha256": "ab" * 32, "wanted": 2,
                                    "have": 1, "servers": ["s1"], "download": "/files/d%2F00"}
        seen, after = [], ""
        while after is not None:
            code, body = page(prefix="d", after=after, limit="7")
            seen += [f["name"] for f in body["files"]]
            after = body["next"]
        assert seen == ["d e"] + names[:25]  # " " sorts before "/"
        code, body = page(after="d/23")
        assert [f["name"] for f in body["files"]] == ["d/24", "e"] and body["next"] is None and body["limit"] == 1000
        assert page(limit="100000")[1]["limit"] == 1000
        for bad in ("0", "-1", "x"):
            code, body = page(limit=bad)
            assert code == 400 and body["error"] == "badargs"
        assert all(listing.closed for listing in depot.listings)
    finally:
        catalog.close()


@pytest.mark.slow
def test_metrics_parse_and_count_what_happens(web):
    before = metrics(web.http)
    assert all(name.startswith("deposito_") for name, _ in before)
    for sid in ("s0", "s1", "s2"):
        assert before["deposito_server_state", L(server=sid, zone=f"z{sid}", state="up")] == 1
        assert before["deposito_server_state", L(server=sid, zone=f"z{sid}", state="dead")] == 0
        assert before["deposito_server_capacity_bytes", L(server=sid)] == 64 << 20
    assert before["deposito_servers", L(state="up")] == 3
    assert before["deposito_copies_wanted", L()] == before["deposito_copies_healthy", L()]
    assert before["deposito_events_total", L(kind="join")] >= 3

    data = os.urandom(100_000)
    with web.wire() as w:
        assert w.put("web/metered", data, 3).startswith("OK stored")
        assert w.get("web/metered")[1] == data
        assert w.cmd("REPLICAS web/metered 2 WAIT").startswith("OK")
    after = metrics(web.http)

    def delta(name, **labels):
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("deposito_requests_total", command="PUT", via="text", outcome="ok") == 1
    assert delta("deposito_requests_total", command="GET", via="text", outcome="ok") == 1
    assert delta("deposito_requests_total", command="REPLICAS", via="text", outcome="ok") == 1
    assert delta("deposito_request_duration_seconds_count", command="PUT", via="text") == 1
    for phase in PUT_PHASES:  # where the PUT's time went, one phase after the other: all of it
        assert delta("deposito_put_phase_seconds_count", phase=phase, via="text") == 1, phase
        assert delta("deposito_put_phase_seconds_sum", phase=phase, via="text") > 0, phase
    assert sum(delta("deposito_put_phase_seconds_sum", phase=phase, via="text") for phase in PUT_PHASES) == \
        pytest.approx(delta("deposito_request_duration_seconds_sum", command="PUT", via="text"), abs=1e-6)
    assert delta("deposito_received_bytes_total", via="text") == len(data)
    assert delta("deposito_sent_bytes_total", via="text") == len(data)
    assert delta("deposito_files") == 1
    assert poll(lambda: metrics(web.http)["deposito_repairs_done_total", L(action="drop")]
                > before["deposito_repairs_done_total", L(action="drop")], 10)


@pytest.mark.slow
def test_downloads_whole_and_in_ranges(web):
    big = FILES["web/dir/big file.bin"]
    etag = f'"{sha(big)}"'
    for path in ("/files/web%2Fdir%2Fbig%20file.bin", "/files/web/dir/big%20file.bin"):
        status, h, body = fetch(web.http, path)
        assert status == 200 and body == big
        assert (h["content-length"], h["etag"], h["accept-ranges"]) == (str(len(big)), etag, "bytes")
    name = "web/ünïcode & \"quotes\"?#.txt"
    status, h, body = fetch(web.http, "/files/" + quote(name, safe=""))
    assert (status, body) == (200, FILES[name])
    status, h, body = fetch(web.http, "/files/web/empty")
    assert (status, h["content-length"], body) == (200, "0", b"")

    path = "/files/" + quote("web/dir/big file.bin", safe="")
    size = len(big)
    block = 1 << 20
    for header, (start, end) in [
        ("bytes=0-0", (0, 0)),
        (f"bytes={block - 3}-{block + 2}", (block - 3, block + 2)),  # across a block boundary
        (f"bytes={2 * block + 7}-", (2 * block + 7, size - 1)),
        ("bytes=-100", (size - 100, size - 1)),
        (f"bytes=5-{size + 50}", (5, size - 1)),
    ]:
        status, h, body = fetch(web.http, path, headers={"Range": header})
        assert status == 206, header
        assert h["content-range"] == f"bytes {start}-{end}/{size}" and h["content-length"] == str(end - start + 1)
        assert body == big[start:end + 1], header
    status, h, _ = fetch(web.http, path, headers={"Range": f"bytes={size}-"})
    assert (status, h["content-range"]) == (416, f"bytes */{size}")
    status, _, body = fetch(web.http, path, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert status == 200 and body == big
    status, _, body = fetch(web.http, path, headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")
    for if_match in ('"stale"', f"W/{etag}"):  # another version, or a weak tag: If-Match compares strongly
        assert fetch(web.http, path, headers={"If-Match": if_match})[0] == 412, if_match
    for if_match in (etag, f'"stale", {etag}', "*"):
        status, _, body = fetch(web.http, path, headers={"If-Match": if_match})
        assert status == 200 and body == big, if_match
    for headers in ({"Range": "bytes=\xb2-"}, {"Range": "bytes=1-2", "If-Range": "\xff"}):  # not ASCII: no range
        status, _, body = fetch(web.http, path, headers=headers)
        assert status == 200 and body == big, headers
    status, h, body = fetch(web.http, path, method="HEAD")
    assert (status, h["content-length"], body) == (200, str(size), b"")

    status, _, body = fetch(web.http, "/files/web/nothing-here")
    assert status == 404 and b"no file named web/nothing-here" in body
    assert fetch(web.http, "/files/")[0] == 400
    assert fetch(web.http, "/nowhere")[0] == 404


@pytest.mark.slow
def test_a_client_that_leaves_mid_download_stops_the_read(web):
    huge = os.urandom(24 << 20)  # more than the socket buffers hold
    with web.wire() as w:
        assert w.put("web/huge", huge, 2).startswith("OK stored")
    aborted = ("deposito_requests_total", L(command="GET", via="http", outcome="aborted"))
    before = metrics(web.http).get(aborted, 0)
    for ranged in (b"", b"Range: bytes=10-\r\n"):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            s.settimeout(10)
            s.connect(("127.0.0.1", web.http))
            s.sendall(b"GET /files/web/huge HTTP/1.1\r\nHost: x\r\n" + ranged + b"\r\n")
            s.recv(65536)
    assert poll(lambda: metrics(web.http).get(aborted, 0) - before == 2, 10)
    status, _, body = fetch(web.http, "/files/web/huge")
    assert status == 200 and body == huge
    assert "Unhandled" not in web.log("proxy") and "Traceback" not in web.log("proxy")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no chromium on this machine: .ci/run installs Debian's chromium with apt-get,"
                    " which could not be done here")
    return found


def browse(args: list[str]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run([chromium()] + CHROMIUM_FLAGS + [f"--user-data-dir={profile}"] + args,
                              capture_output=True, timeout=60)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
def test_status_page_in_a_real_browser(web):
    url = f"http://127.0.0.1:{web.http}/"
    dom = browse(["--dump-dom", url])
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    page = dom.stdout.decode()
    text = Text.of(page)
    assert "Every file has its wanted copies." in text, text
    for sid in ("s0", "s1", "s2"):
        assert f"| {sid} | 127.0.0.1:" in text and f"| up | z{sid} |" in text.split(f"| {sid} |", 1)[1][:200]
    status = get_json(web.http, "/api/status")
    assert f"{status['files']} | files" in text and "3 / 3 | servers up" in text
    assert "0 | under-replicated" in text
    assert text.count("joined") >= 3
    assert '<meta http-equiv="refresh"' in page

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, size in (("status-page.png", "1200,900"), ("status-page-phone.png", "390,844")):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        r = browse([f"--screenshot={shot}", f"--window-size={size}", url])
        assert r.returncode == 0 and shot.exists(), r.stderr.decode()[-2000:]
        assert png_size(shot) == tuple(int(n) for n in size.split(","))
        assert shot.stat().st_size > 10_000  # not a blank page
    print(f"screenshots in {ARTIFACTS}")


@pytest.mark.slow
def test_downloads_fail_over_from_rotten_copies_and_the_page_tells(web):
    data = os.urandom(3 << 20 | 11)
    with web.wire() as w:
        assert w.put("web/rot", data, 3).startswith("OK stored")
    digest = sha(data)
    copies = {sid: blob for sid in ("s0", "s1", "s2") for blob in web.blob_files(sid)
              if blob.stat().st_size == len(data) and sha(blob.read_bytes()) == digest}
    assert len(copies) == 3
    # the two copies reads try first rot, in different blocks: reads must go on to the third
    blob_id = next(iter(copies.values())).name
    first, second, _ = read_order(blob_id, [Member(sid, "z", "h", 1) for sid in copies])
    for m, offset in ((first, 1 << 20), (second, 5)):
        with open(copies[m.id], "r+b") as f:
            f.seek(offset)
            f.write(b"\x00rotten\x00")
    path = "/files/web%2Frot"
    for _ in range(4):
        status, _, body = fetch(web.http, path)
        assert status == 200 and body == data
        status, _, body = fetch(web.http, path, headers={"Range": f"bytes={(1 << 20) - 9}-{(2 << 20) + 9}"})
        assert status == 206 and body == data[(1 << 20) - 9:(2 << 20) + 10]
    assert poll(lambda: any(e["kind"] == "corrupt" for e in get_json(web.http, "/api/status")["events"]), 10)
    assert metrics(web.http)["deposito_bad_copies_total", L(reason="corrupt")] >= 1


def test_a_download_no_copy_can_serve_is_a_503_without_the_files_headers(web):
    """The only copy rotten: 503 and a line that says why, with none of the
    headers of the file it could not send (its ETag above all)."""
    data = os.urandom(10_000)
    with web.wire() as w:
        assert w.put("web/only", data, 1).startswith("OK stored")
    [holder] = web.holders(data)
    [blob] = [p for p in web.blob_files(holder) if p.read_bytes() == data]
    with open(blob, "r+b") as f:
        f.seek(100)
        f.write(bytes([data[100] ^ 0xFF]))
    status, headers, body = fetch(web.http, "/files/web%2Fonly")
    assert status == 503 and b"no copy" in body, (status, body)
    named = {k.lower() for k in headers}
    assert not named & {"etag", "accept-ranges", "x-deposito-version", "content-disposition"}, headers


@pytest.mark.slow
def test_json_logs_from_twistd(tmp_path):
    """The README's recipe: ``twistd --logger deposito.events.json_log``."""
    out = tmp_path / "proxy.json"
    cport = free_port()
    env = dict(os.environ, DEPOSITO_JSON_LOG=str(out))
    proxy = subprocess.Popen([TWISTD, "--logger", "deposito.events.json_log", "-n", "--pidfile",
                              str(tmp_path / "proxy.pid"), "deposito-proxy", "--port", "tcp:0:interface=127.0.0.1",
                              "--cluster-port", f"tcp:{cport}:interface=127.0.0.1", "--data", str(tmp_path / "p")],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    (tmp_path / "s0").mkdir()
    server = subprocess.Popen([TWISTD, "-n", "--pidfile", str(tmp_path / "s0.pid"), "--logfile",
                               str(tmp_path / "s0.log"), "deposito-server", "--proxy", f"tcp:127.0.0.1:{cport}",
                               "--port", "tcp:0:interface=127.0.0.1", "--data", str(tmp_path / "s0"),
                               "--name", "s0", "--zone", "z0"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def joined():
        if not out.exists():
            return None
        lines = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
        return [e for e in lines if e.get("event") == "join"]

    try:
        found = poll(joined, 20)
        assert found, out.read_text() if out.exists() else "no JSON log"
        assert found[0]["id"] == "s0" and found[0]["zone"] == "z0" and found[0]["log_level"]["name"] == "info"
    finally:
        for p in (server, proxy):
            p.send_signal(signal.SIGTERM)
        for p in (server, proxy):
            p.wait(15)


def _raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` and ``body``; all that comes back until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got


def test_a_request_body_is_refused_unread_on_the_read_only_port(web):
    """The HTTP side takes no uploads: a body over 64 KiB, or of unknown
    length, gets 413 before it is sent or read (never stored on the proxy's
    disk), and the connection is closed after the answer; a small one is read
    and answered as before; and the port goes on serving."""
    huge = b"POST /metrics HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000000\r\n\r\n"
    got = _raw_request(web.http, huge, b"x" * 1000)  # far less than announced, yet answered
    assert got.startswith(b"HTTP/1.1 413 ") and b"\r\nConnection: close\r\n" in got, got[:300]
    asks = b"PUT /files/x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n"
    got = _raw_request(web.http, asks)
    assert got.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in got, got[:300]
    chunked = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert _raw_request(web.http, chunked, b"5\r\nhello\r\n").startswith(b"HTTP/1.1 413 ")
    got = _raw_request(web.http, chunked, b"zz\r\nhello\r\n")  # a bad chunk: twisted.web says 400 first
    assert got.startswith(b"HTTP/1.1 400 ") and got.count(b"HTTP/1.1 ") == 1, got[:300]
    small = b"POST /metrics HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    assert _raw_request(web.http, small).startswith(b"HTTP/1.1 405 ")
    for method in (b"PUT", b"DELETE"):  # a small body or none: 405 and what is allowed (was 501 "Huh?")
        got = _raw_request(web.http, method + b" /files/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
                           b"Connection: close\r\n\r\nx")
        assert got.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET, HEAD\r\n" in got, got[:300]
    assert get_json(web.http, "/api/status")["servers_up"] == 3


def test_a_body_for_a_client_gone_while_its_read_was_set_up_is_not_read():
    """The client left between its request and its body: no copy is read
    for it (each copy was tried in turn, and the proxy logged unhandled
    errors: a request already gone never says it is finished)."""
    from twisted.internet import defer
    from twisted.web.test.requesthelper import DummyRequest

    from deposito.catalog import FileRecord
    from deposito.web import send_body

    class Depot:
        reads = 0

        async def read(self, *args, **kwargs):
            Depot.reads += 1

    request = DummyRequest([b""])
    request._disconnected = True
    record = FileRecord("f", 1, "b" * 32, 10, "ab" * 32, 2, ("s1",))
    done = defer.ensureDeferred(send_body(Depot(), request, record, 0, 10, "GET f"))  # type: ignore[arg-type]
    assert done.called and done.result is None and Depot.reads == 0
