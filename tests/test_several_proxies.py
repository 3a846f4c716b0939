"""Clients given several proxies: the address lists, then failover against
fake proxies on loopback, then against real proxies killed with SIGKILL.

The real tests run two independent clusters, each a proxy with its own
catalog: every proxy is a full front door, so a client cannot tell them from
proxies sharing one catalog, and a name written through one is absent from
the other, which shows where a request went.
"""

from __future__ import annotations

import io
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import pytest_twisted
from twisted.internet.testing import StringTransport

from deposito import cli, errors
from deposito.blocking import BlockingClient
from deposito.client import DepositoClient, DepositoClientProtocol, connect
from deposito.proxies import ProxiesUnreachable, parse_addresses
from deposito.wire import ConnectionLost, OutcomeUnknown
from tests.cluster import Cluster
from tests.test_client import GREETING, FakeProxy, failure, payload, sha


def refusing() -> str:
    """An address where nothing listens."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


# ---------------------------------------------------------------- address lists


def test_address_lists() -> None:
    assert parse_addresses("a:1") == [("a", 1)]
    assert parse_addresses("a:1,b:2") == [("a", 1), ("b", 2)]
    assert parse_addresses(" a:1 , [::1]:2") == [("a", 1), ("::1", 2)]
    assert parse_addresses(("a", 1)) == [("a", 1)]
    assert parse_addresses(["a:1", ("b", 2)]) == [("a", 1), ("b", 2)]
    for bad in ("", ",", "a:1,", ",a:1", "a:1,,b:2", "a:1,b", "a:1,b:0", "a:1,b:65536", "a:1;b:2", "a:1 b:2", "::1:7000"):
        with pytest.raises(ValueError):
            parse_addresses(bad)
    with pytest.raises(ValueError):
        parse_addresses([])


@pytest.mark.parametrize("proxies", ["a:1,,b:2", "a:1,", "a:1,b:99999", "a:1,b", " , "])
def test_a_bad_proxy_list_is_a_usage_error(proxies: str, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DEPOSITO_PROXY", raising=False)
    assert cli.main(["--proxy", proxies, "status"]) == 2
    assert "usage: deposito" in capsys.readouterr().err
    monkeypatch.setenv("DEPOSITO_PROXY", proxies)
    assert cli.main(["status"]) == 2
    assert "--proxy" in capsys.readouterr().err


# ---------------------------------------------------------------- fake proxies


@pytest.fixture
def two() -> Iterator[tuple[FakeProxy, FakeProxy]]:
    a, b = FakeProxy(tokens={"sesame"}), FakeProxy(tokens={"sesame"})
    yield a, b
    a.stop()
    b.stop()


def test_cli_uses_the_first_proxy_that_answers(two: tuple[FakeProxy, FakeProxy], monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two
    monkeypatch.setenv("DEPOSITO_PROXY", f"{refusing()},{a.address},{b.address}")
    monkeypatch.setenv("DEPOSITO_TOKEN", "sesame")
    assert cli.main(["status"]) == 0
    assert a.requests == ["AUTH sesame", "STATUS", "QUIT"] and b.requests == []
    assert "files:" in capsys.readouterr().out


def test_cli_with_every_proxy_down_exits_1_naming_each(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    first, second = refusing(), refusing()
    monkeypatch.delenv("DEPOSITO_PROXY", raising=False)
    assert cli.main(["--proxy", f"{first},{second}", "ls"]) == 1
    assert capsys.readouterr().err == (f"deposito: cannot reach any proxy: {first}: connection refused; "
                                       f"{second}: connection refused\n")


def test_blocking_client_moves_on_and_presents_the_token_on_each_connection(
        two: tuple[FakeProxy, FakeProxy]) -> None:
    a, b = two
    with BlockingClient([refusing(), a.address, b.address], token="sesame") as c:
        assert c.address == ("127.0.0.1", a.port)
        c.status()
        a.kill()
        c.put("n", io.BytesIO(b"after"))  # found gone before it was sent: goes to b
        assert c.address == ("127.0.0.1", b.port)
    assert b.requests[:2] == ["AUTH sesame", "PUT n 5"] and b.files["n"][0] == b"after"
    assert "PUT n 5" not in a.requests


def test_a_refused_token_is_final(two: tuple[FakeProxy, FakeProxy]) -> None:
    a, b = two
    with pytest.raises(errors.Denied):
        BlockingClient([a.address, b.address], token="wrong")
    assert b.requests == []


def test_blocking_client_with_every_proxy_gone(two: tuple[FakeProxy, FakeProxy]) -> None:
    a, b = two
    c = BlockingClient(f"{a.address},{b.address}", token="sesame")
    a.kill()
    b.kill()
    with pytest.raises(ProxiesUnreachable) as info:
        c.stat("n")
    # in the order tried: the other proxy first, then the one whose connection was gone
    assert [address for address, _ in info.value.failures] == [b.address, a.address]
    assert isinstance(info.value, OSError)
    c.close()


def test_a_get_into_a_caller_stream_that_got_bytes_is_not_made_again(two: tuple[FakeProxy, FakeProxy],
                                                                     tmp_path: Path) -> None:
    a, b = two
    data = payload(300000)
    for proxy in (a, b):
        proxy.files["f"] = (data, 1, 1)
    a.cut_get_after = 100000
    with BlockingClient([a.address, b.address], token="sesame") as c:
        sink = io.BytesIO()
        with pytest.raises(ConnectionLost):
            c.get("f", sink)
        assert len(sink.getvalue()) == 100000 and "GET f" not in b.requests
    a.cut_get_after = 100000
    with BlockingClient([a.address, b.address], token="sesame") as c:
        assert c.get("f", tmp_path / "f").sha256 == sha(data)  # into a path: made again on b
    assert (tmp_path / "f").read_bytes() == data and os.listdir(tmp_path) == ["f"]
    assert b.requests.count("GET f") == 1


def test_one_proxy_a_write_cut_after_it_was_sent_is_of_unknown_outcome() -> None:
    protocol = DepositoClientProtocol()
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(GREETING)
    client = DepositoClient(protocol)
    d = client.delete("n")
    queued = client.stat("n")
    protocol.connectionLost()
    lost = failure(d)
    assert isinstance(lost, OutcomeUnknown) and isinstance(lost, ConnectionLost)
    assert "DELETE was sent" in str(lost) and "unknown" in str(lost)
    assert type(failure(queued)) is ConnectionLost  # never sent: plainly lost


@pytest_twisted.inlineCallbacks
def test_twisted_client_moves_on_from_a_refusing_proxy_and_a_lost_one(two: tuple[FakeProxy, FakeProxy]) -> Any:
    from twisted.internet import reactor

    a, b = two
    client = yield connect(reactor, f"tcp:{refusing()},{a.address},tcp:127.0.0.1:{b.port}",
                           token="sesame")
    yield client.put("n", io.BytesIO(b"on a"))
    a.kill()
    yield client.protocol.whenClosed()
    stored = yield client.put("n", io.BytesIO(b"on b"))
    assert stored.version == 1 and b.files["n"][0] == b"on b"
    assert b.requests[:2] == ["AUTH sesame", "PUT n 4"]
    yield client.quit()


@pytest_twisted.inlineCallbacks
def test_twisted_get_is_made_again_only_where_no_byte_is_duplicated(two: tuple[FakeProxy, FakeProxy],
                                                                   tmp_path: Path) -> Any:
    from twisted.internet import reactor

    a, b = two
    data = payload(300000)
    for proxy in (a, b):
        proxy.files["f"] = (data, 1, 1)
    a.cut_get_after = 100000
    client = yield connect(reactor, [a.address, b.address], token="sesame")
    sink = io.BytesIO()
    with pytest.raises(ConnectionLost):
        yield client.get("f", sink)
    assert len(sink.getvalue()) == 100000 and "GET f" not in b.requests
    yield client.close()

    client = yield connect(reactor, [a.address, b.address], token="sesame")
    got = yield client.get("f", str(tmp_path / "f"))  # into a path: made again on b
    assert got.sha256 == sha(data) and (tmp_path / "f").read_bytes() == data
    assert os.listdir(tmp_path) == ["f"] and b.requests.count("GET f") == 1
    yield client.quit()


@pytest_twisted.inlineCallbacks
def test_twisted_client_with_every_proxy_down() -> Any:
    from twisted.internet import reactor

    with pytest.raises(ProxiesUnreachable) as info:
        yield connect(reactor, [refusing(), refusing()])
    assert len(info.value.failures) == 2


@contextmanager
def hung() -> Iterator[str]:
    """An address whose 'proxy' accepts connections (the kernel does, from
    its backlog) and never says a word, as a hung proxy does."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield f"127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def test_blocking_client_gives_up_a_proxy_that_accepts_and_never_greets(two: tuple[FakeProxy, FakeProxy]) -> None:
    a, _ = two
    with hung() as silent:
        started = time.monotonic()
        with BlockingClient([silent, a.address], token="sesame", connect_timeout=0.5) as c:
            assert c.address == ("127.0.0.1", a.port)
            c.status()
        assert time.monotonic() - started < 5


@pytest_twisted.inlineCallbacks
def test_twisted_client_gives_up_a_proxy_that_accepts_and_never_greets(two: tuple[FakeProxy, FakeProxy],
                                                                       monkeypatch: pytest.MonkeyPatch) -> Any:
    from twisted.internet import reactor

    from deposito import client as client_module

    monkeypatch.setattr(client_module, "GREETING_TIMEOUT", 0.5)
    a, _ = two
    with hung() as silent:
        started = time.monotonic()
        client = yield connect(reactor, [silent, a.address], token="sesame")
        assert time.monotonic() - started < 5
        yield client.status()
        assert a.requests[:2] == ["AUTH sesame", "STATUS"]
        yield client.quit()


# ---------------------------------------------------------------- real proxies


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Cluster, Cluster]]:
    """Two clusters of one storage server each. The first one's server
    relays GETs through its proxy (``--no-handoff``), so that killing that
    proxy cuts a GET off (a handed-off GET would be finished by the server)."""
    a = Cluster(tmp_path / "a", proxy_args=("--replicas", "1"), server_args=("--no-handoff",))
    b = Cluster(tmp_path / "b", proxy_args=("--replicas", "1"))
    for c in (a, b):
        c.root.mkdir()
    a.start(1)
    try:
        b.start(1)
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def big() -> bytes:
    """A file larger than the socket buffers between proxy and client can
    hold (a receive buffer grows to 32 MiB on Linux), so that a proxy killed
    at the first bytes cuts the transfer off."""
    return os.urandom(64 * 1024 * 1024 + 3)


def both(a: Cluster, b: Cluster) -> str:
    return f"127.0.0.1:{a.port},127.0.0.1:{b.port}"


def put_on(cluster: Cluster, name: str, data: bytes, times: int = 1) -> None:
    with cluster.wire() as w:
        for _ in range(times):
            assert w.put(name, data).startswith("OK stored")


def version_on(cluster: Cluster, name: str) -> Optional[int]:
    with cluster.wire() as w:
        reply = w.cmd(f"STAT {name}")
    return None if reply.startswith("ERR notfound") else int(reply.split("version=")[1].split()[0])


@contextmanager
def killing_at_first_bytes(cluster: Cluster, seen: list[tuple[int, int]]) -> Iterator[Any]:
    """A progress bar for the command that kills the proxy with SIGKILL
    when the first file bytes have moved, and records every step."""
    def progress(done: int, total: int) -> None:
        if not seen:
            cluster.kill_proxy()
        seen.append((done, total))
    yield progress


@pytest.mark.slow
def test_cli_on_real_proxies(pair: tuple[Cluster, Cluster], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    a, b = pair
    data = big()
    (tmp_path / "big.bin").write_bytes(data)
    put_on(a, "big.bin", data)
    put_on(b, "big.bin", data, times=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEPOSITO_TOKEN", raising=False)

    # the first refuses: the second answers
    monkeypatch.setenv("DEPOSITO_PROXY", f"{refusing()},127.0.0.1:{a.port}")
    assert cli.main(["stat", "big.bin", "--json"]) == 0
    assert '"version": 1' in capsys.readouterr().out

    # a GET cut mid-body by a killed proxy starts again on the next, into the aside file
    out = tmp_path / "out"
    out.mkdir()
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(cli, "_progress", lambda label: killing_at_first_bytes(a, seen))
    assert cli.main(["--proxy", both(a, b), "get", "big.bin", "-o", str(out)]) == 0, capsys.readouterr().err
    assert (out / "big.bin").read_bytes() == data and os.listdir(out) == ["big.bin"]
    steps = [done for done, _ in seen]
    # cut before the end on the first proxy; the whole file from the second (a progress bar
    # may or may not be seen going back: the first proxy's last bytes can arrive after the kill)
    assert steps[0] < len(data) and steps[-1] == len(data)

    # a PUT cut mid-body is reported, of unknown outcome, and not made again
    a.start_proxy()
    a.wait_up(1)
    seen.clear()
    assert cli.main(["--proxy", both(a, b), "put", "big.bin", "--name", "cut.bin"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("deposito: connection to the proxy lost") and "PUT was sent" in err
    assert "unknown" in err and err.count("\n") == 1
    assert version_on(b, "cut.bin") is None

    # every proxy down
    b.kill_proxy()
    assert cli.main(["--proxy", both(a, b), "status"]) == 1
    assert capsys.readouterr().err.startswith("deposito: cannot reach any proxy: ")


@pytest.mark.slow
def test_blocking_client_on_real_proxies(pair: tuple[Cluster, Cluster], tmp_path: Path) -> None:
    a, b = pair
    put_on(a, "f", b"version one")
    put_on(b, "f", b"version two", times=2)
    with BlockingClient([refusing(), ("127.0.0.1", a.port), f"127.0.0.1:{b.port}"]) as c:
        assert c.stat("f").version == 1  # the second answered
        a.kill_proxy()
        assert c.stat("f").version == 2  # the next request went to the next
        assert c.put("g", io.BytesIO(b"on b")).version == 1
    assert version_on(b, "g") == 1

    a.start_proxy()
    a.wait_up(1)
    data = big()
    (tmp_path / "big.bin").write_bytes(data)
    seen: list[tuple[int, int]] = []
    with BlockingClient([("127.0.0.1", a.port), ("127.0.0.1", b.port)]) as c:
        with killing_at_first_bytes(a, seen) as progress:
            with pytest.raises(OutcomeUnknown):
                c.put("big.bin", tmp_path / "big.bin", progress=progress)
        assert version_on(b, "big.bin") is None  # not sent again
        assert c.stat("f").version == 2  # the client goes on with the next proxy


@pytest.mark.slow
@pytest_twisted.inlineCallbacks
def test_twisted_client_on_real_proxies(pair: tuple[Cluster, Cluster], tmp_path: Path) -> Any:
    from twisted.internet import reactor

    a, b = pair
    data = big()
    put_on(a, "big.bin", data)
    put_on(b, "big.bin", data, times=2)
    client = yield connect(reactor, [f"tcp:{refusing()}",
                                     f"tcp:127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
    try:
        assert (yield client.stat("big.bin")).version == 1
        out = tmp_path / "out"
        out.mkdir()
        seen: list[tuple[int, int]] = []
        with killing_at_first_bytes(a, seen) as progress:
            got = yield client.get("big.bin", str(out / "big.bin"), progress)
        assert got.version == 2 and (out / "big.bin").read_bytes() == data
        assert os.listdir(out) == ["big.bin"]
        steps = [done for done, _ in seen]
        assert steps[0] < len(data) and steps[-1] == len(data)  # cut on a, whole from b (version 2)
        assert (yield client.stat("big.bin")).version == 2
    finally:
        yield client.quit()

    a.start_proxy()
    a.wait_up(1)
    client = yield connect(reactor, f"tcp:127.0.0.1:{a.port},tcp:127.0.0.1:{b.port}")
    try:
        seen = []
        with killing_at_first_bytes(a, seen) as progress:
            with pytest.raises(OutcomeUnknown):
                yield client.put("cut.bin", io.BytesIO(data), progress=progress)
        assert version_on(b, "cut.bin") is None
        assert (yield client.stat("big.bin")).version == 2
        b.kill_proxy()
        with pytest.raises(ProxiesUnreachable):
            yield client.stat("big.bin")
    finally:
        yield client.close()


def _drop_idle(proxy: FakeProxy) -> None:
    """What a proxy's idle timeout does: its connections go, the proxy stays."""
    for conn in proxy.connections:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    time.sleep(0.2)


def test_blocking_client_goes_back_to_its_proxy_after_an_idle_close_while_the_other_is_down() -> None:
    """A connection the proxy closed while idle rules it out for no request
    (before: the next request tried only the other proxy, down, and failed)."""
    a = FakeProxy()
    try:
        a.files["x"] = (b"hello", 1, 1)
        with BlockingClient(f"{a.address},{refusing()}") as client:
            assert client.stat("x").size == 5
            for _ in range(3):
                _drop_idle(a)
                assert client.stat("x").size == 5
    finally:
        a.stop()


@pytest_twisted.ensureDeferred
async def test_twisted_client_goes_back_to_its_proxy_after_an_idle_close_while_the_other_is_down() -> None:
    """As the blocking client (before: every request after the close failed,
    for as long as the other proxy was down)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    a = FakeProxy()
    try:
        a.files["x"] = (b"hello", 1, 1)
        client = await connect(reactor, f"{a.address},{refusing()}")
        try:
            assert (await client.stat("x")).size == 5
            _drop_idle(a)
            await deferLater(reactor, 0.2, lambda: None)
            for _ in range(3):
                assert (await client.stat("x")).size == 5
        finally:
            await client.close()
    finally:
        a.stop()
