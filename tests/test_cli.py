"""The ``deposito`` command: in-process against a fake proxy for every
option and exit path, then as a subprocess against a real cluster (the
``cluster`` fixtures of conftest.py) for real bytes.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deposito.cli import main
from tests.test_client import FakeProxy, payload, sha
from tests.cluster import shut

CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    proxy = FakeProxy()
    monkeypatch.setenv("DEPOSITO_PROXY", proxy.address)
    monkeypatch.delenv("DEPOSITO_TOKEN", raising=False)
    yield proxy
    proxy.stop()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def only_files(folder: Path) -> list[str]:
    """Every entry of folder, hidden ones too (a leftover temp file shows)."""
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------- usage


def test_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("put", "get", "stat", "ls", "rm", "replicas", "servers", "status", "--proxy", "--token"):
        assert command in out
    for command in ("put", "get", "stat", "ls", "rm", "replicas", "servers", "status"):
        assert main([command, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: deposito {command}")


@pytest.mark.parametrize("argv", [
    [], ["frob"], ["put"], ["put", "-"], ["get"], ["get", "dir/"], ["get", ".."],
    ["--proxy", "nohost", "ls"], ["--proxy", "h:99999", "ls"], ["put", "x", "--replicas", "0"],
    ["put", "x", "--replicas", "17"], ["replicas", "a", "many"], ["replicas", "a", "0"], ["replicas", "a", "17"],
    ["stat", "a", "--yaml"], ["put", "x", "--name", ""],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: deposito" in err and "error:" in err


def test_refused_connection_exits_1_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    monkeypatch.delenv("DEPOSITO_PROXY", raising=False)
    assert main(["--proxy", f"127.0.0.1:{port}", "ls"]) == 1
    assert capsys.readouterr().err == f"deposito: cannot reach proxy at 127.0.0.1:{port}: connection refused\n"
    monkeypatch.setenv("DEPOSITO_PROXY", f"127.0.0.1:{port}")
    assert main(["status"]) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


def test_a_wrong_deposito_proxy_is_said_to_be_the_variables(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Set wrong in the environment, it was reported as the --proxy the user never typed."""
    monkeypatch.setenv("DEPOSITO_PROXY", "tcp:127.0.0.1:7001")
    assert main(["ls"]) == 2
    err = capsys.readouterr().err
    assert "error: $DEPOSITO_PROXY: " in err and "argument --proxy" not in err, err
    assert main(["--proxy", "127.0.0.1:1", "ls"]) == 1  # --proxy given: the variable is not looked at
    assert "cannot reach proxy at 127.0.0.1:1" in capsys.readouterr().err


def test_a_proxy_that_accepts_and_closes_without_a_greeting_is_said_so(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a refusal: it took the connection and said nothing (hung, or not a proxy)."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def close_each() -> None:
        for _ in range(3):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=close_each, daemon=True).start()
    try:
        assert main(["--proxy", f"127.0.0.1:{port}", "ls"]) == 1
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert err.startswith(f"deposito: proxy at 127.0.0.1:{port} did not greet: ") and "refused" not in err, err


# ---------------------------------------------------------------- put and get


def test_put_then_get_into_the_current_folder(fake: FakeProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = payload(300_000)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "report.bin").write_bytes(data)
    assert main(["put", str(tmp_path / "src" / "report.bin"), "--replicas", "3"]) == 0
    out, err = capsys.readouterr()
    assert out == f"stored report.bin version=1 size={len(data)} sha256={sha(data)} replicas=3\n"
    assert err == ""  # not a terminal: no progress bar
    assert main(["put", str(tmp_path / "src" / "report.bin"), "--name", "dir/sub/r.bin"]) == 0
    capsys.readouterr()

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["get", "dir/sub/r.bin"]) == 0
    assert (work / "r.bin").read_bytes() == data
    assert capsys.readouterr() == ("", "")

    (work / "r.bin").write_bytes(b"mine")
    assert main(["get", "dir/sub/r.bin"]) == 1
    assert "r.bin exists; use --force" in capsys.readouterr().err
    assert (work / "r.bin").read_bytes() == b"mine"
    assert main(["get", "dir/sub/r.bin", "--force"]) == 0
    assert (work / "r.bin").read_bytes() == data

    (work / "out").mkdir()
    assert main(["get", "report.bin", "-o", "out"]) == 0  # a folder: the file goes in it
    assert (work / "out" / "report.bin").read_bytes() == data
    (work / "named").write_bytes(b"old")
    assert main(["get", "report.bin", "-o", "named"]) == 0  # an explicit file is replaced
    assert (work / "named").read_bytes() == data
    assert only_files(work) == ["named", "out", "r.bin"]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_put_of_a_file_whose_size_is_known_only_once_read(fake: FakeProxy, capsys: pytest.CaptureFixture[str]) -> None:
    """A file of /proc (it cannot seek to its end) is read whole first, as
    the standard input is; it failed with a message written for the Python
    client ('needs size='). A file that tells a wrong size (as /sys does)
    is refused naming it, and nothing is stored."""
    assert main(["put", "/proc/self/status", "--name", "status"]) == 0
    assert fake.files["status"][0].startswith(b"Name:") and "stored status" in capsys.readouterr().out
    sysfs = "/sys/kernel/mm/transparent_hugepage/enabled"
    if os.path.exists(sysfs) and os.stat(sysfs).st_size > len(open(sysfs, "rb").read()):
        assert main(["put", sysfs, "--name", "thp"]) == 1
        err = capsys.readouterr().err
        assert f"cannot put {sysfs}" in err and "nothing was stored" in err and "thp" not in fake.files


def test_get_writes_into_a_pipe_or_device_and_through_a_link(fake: FakeProxy, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """-o naming a FIFO (as a device such as /dev/null) writes into it (it is
    not replaced by a file); -o naming a link replaces the file it names, and the link stays."""
    import stat
    import threading

    monkeypatch.chdir(tmp_path)
    data = payload(200_000)
    fake.files["f"] = (data, 1, 2)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert main(["get", "f", "-o", str(fifo)]) == 0
    reader.join(10)
    assert got == [data] and stat.S_ISFIFO(os.lstat(fifo).st_mode)

    (tmp_path / "real").write_bytes(b"old")
    os.symlink("real", tmp_path / "link")
    assert main(["get", "f", "-o", "link"]) == 0
    assert os.path.islink(tmp_path / "link") and (tmp_path / "real").read_bytes() == data
    assert only_files(tmp_path) == ["fifo", "link", "real"]


def test_get_of_a_name_whose_last_part_is_long(fake: FakeProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = "y" * 250  # a legal file name; its file aside must be one too
    fake.files[name] = (b"data", 1, 2)
    assert main(["get", name]) == 0 and (tmp_path / name).read_bytes() == b"data"
    assert only_files(tmp_path) == [name]


def test_get_to_stdout(fake: FakeProxy, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    fake.files["a b"] = (b"\x00binary\xffbytes\n", 1, 2)
    assert main(["get", "a b", "-o", "-"]) == 0
    assert capsysbinary.readouterr() == (b"\x00binary\xffbytes\n", b"")


def test_put_from_stdin(fake: FakeProxy, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = payload(200_000)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["put", "-", "--name", "from stdin"]) == 0
    assert fake.files["from stdin"][0] == data
    assert capsys.readouterr().out.startswith('stored "from stdin" version=1')


def test_failed_get_leaves_no_file(fake: FakeProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    fake.files["big"] = (payload(500_000), 1, 2)
    fake.cut_get_after = 200_000
    assert main(["get", "big"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("deposito: connection to the proxy lost") and err.count("\n") == 1
    assert only_files(tmp_path) == []

    assert main(["get", "missing"]) == 1
    assert capsys.readouterr().err == "deposito: notfound missing\n".replace("notfound ", "notfound: ")
    assert only_files(tmp_path) == []


def test_put_of_a_missing_file_exits_1(fake: FakeProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["put", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == f"deposito: cannot read {tmp_path / 'nope'}: No such file or directory\n"
    assert main(["put", str(tmp_path)]) == 1
    assert fake.requests == []


def test_err_from_the_proxy_exits_1(fake: FakeProxy, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    assert main(["put", str(src), "--replicas", "4"]) == 1
    assert capsys.readouterr().err == "deposito: unavailable: only 3 servers up\n"
    assert main(["rm", "nothing"]) == 1
    assert main(["replicas", "nothing", "2"]) == 1


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(fake: FakeProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(payload(1_000_000))
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["put", str(src)]) == 0
    assert main(["get", "f.bin", "-o", str(tmp_path / "back")]) == 0
    assert "f.bin" in terminal.getvalue() and "B/s" in terminal.getvalue()
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    assert main(["put", str(src)]) == 0
    assert main(["get", "f.bin", "-o", str(tmp_path / "back")]) == 0
    assert piped.getvalue() == ""


# ---------------------------------------------------------------- the other commands


def test_stat_ls_rm_replicas_servers_status(fake: FakeProxy, capsys: pytest.CaptureFixture[str]) -> None:
    fake.files.update({"d/a": (b"aaa", 2, 2), "d/b c": (b"bb", 1, 3), "e": (b"", 1, 1)})
    assert main(["stat", "d/a", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "name": "d/a", "size": 3, "sha256": sha(b"aaa"), "version": 2, "replicas": 2, "have": 2,
        "servers": ["s0", "s1"]}
    assert main(["stat", "d/a"]) == 0
    out = capsys.readouterr().out
    assert "version:  2" in out and "servers:  s0, s1" in out

    assert main(["ls", "d/", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"size": 3, "wanted": 2, "have": 2, "name": "d/a"}, {"size": 2, "wanted": 3, "have": 3, "name": "d/b c"}]
    assert main(["ls"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "SIZE  WANTED  HAVE  NAME", "   3       2     2  d/a", "   2       3     3  d/b c", "   0       1     1  e"]
    assert main(["ls", "nothing/"]) == 0
    assert capsys.readouterr().out == ""

    assert main(["replicas", "d/a", "3", "--wait"]) == 0
    assert capsys.readouterr().out == "d/a: replicas=3 have=3\n"
    assert fake.requests[-2:] == ["REPLICAS d/a 3 WAIT", "QUIT"]

    assert main(["rm", "d/b c"]) == 0
    assert "d/b c" not in fake.files

    assert main(["servers", "--json"]) == 0
    servers = json.loads(capsys.readouterr().out)
    assert [(s["id"], s["state"], s["zone"]) for s in servers] == [("s0", "up", "a"), ("s1", "down", "rack 2")]
    assert main(["servers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "STATE", "USED", "CAPACITY", "BLOBS", "ZONE"]
    assert lines[2].split()[:3] == ["s1", "127.0.0.1:4002", "down"] and lines[2].endswith("rack 2")

    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == 2
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "servers_up:      1" in out and "repairs_running: 0" in out


def test_ls_pages_through_and_prints_each_page_as_it_comes(fake: FakeProxy, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import deposito.cli

    monkeypatch.setattr(deposito.cli, "LS_PAGE", 3)
    sizes = [1, 22, 3, 4444, 5, 6, 77777, 8]
    fake.files.update({f"p/{i}": (b"x" * size, 1, 2) for i, size in enumerate(sizes)})
    fake.files["q"] = (b"", 1, 1)
    assert main(["ls", "p/"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "SIZE  WANTED  HAVE  NAME",
        "   1       2     2  p/0",
        "  22       2     2  p/1",
        "   3       2     2  p/2",
        "4444       2     2  p/3",  # the second page: as wide as the first, or wider
        "   5       2     2  p/4",
        "   6       2     2  p/5",
        "77777       2     2  p/6",
        "    8       2     2  p/7",
    ]
    assert [r for r in fake.requests if r.startswith("LIST")] == [
        'LIST p/ "" 3', "LIST p/ p/2 3", "LIST p/ p/5 3"]
    assert main(["ls", "p/", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == [{"size": size, "wanted": 2, "have": 2, "name": f"p/{i}"} for i, size in enumerate(sizes)]
    assert out == json.dumps(json.loads(out), indent=2) + "\n"  # as one json.dumps would print it
    fake.files = {f"r/{i}": (b"", 1, 1) for i in range(6)}  # full pages, then an empty one
    assert main(["ls", "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == [f"r/{i}" for i in range(6)]
    assert main(["ls", "nothing", "--json"]) == 0
    assert capsys.readouterr().out == "[]\n"


def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    proxy = FakeProxy(tokens={"sesame"})
    try:
        monkeypatch.setenv("DEPOSITO_PROXY", proxy.address)
        monkeypatch.delenv("DEPOSITO_TOKEN", raising=False)
        assert main(["ls"]) == 1
        err = capsys.readouterr().err
        assert "denied" in err and "give a token: --token T, or $DEPOSITO_TOKEN" in err, err
        monkeypatch.setenv("DEPOSITO_TOKEN", "sesame")
        assert main(["ls"]) == 0
        assert main(["--token", "wrong", "ls"]) == 1
        assert "give a token" not in capsys.readouterr().err  # one was given
        assert proxy.requests.count("AUTH sesame") == 1 and "AUTH wrong" in proxy.requests
    finally:
        proxy.stop()


# ---------------------------------------------------------------- the command on a real cluster


@pytest.fixture
def live(request: pytest.FixtureRequest) -> Any:
    """A real cluster of conftest.py (proxy + 3 storage servers as twistd processes)."""
    for name in ("shared_cluster", "cluster"):
        try:
            return request.getfixturevalue(name)
        except pytest.FixtureLookupError:
            continue
    pytest.skip("needs the `cluster` fixture of tests/conftest.py")


def deposito(*args: str, cwd: Path, port: int | None = None, input: bytes | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the installed ``deposito`` script on this checkout's code, output piped."""
    script = Path(sys.executable).with_name("deposito")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "deposito.cli"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEPOSITO_")}
    environ["PYTHONPATH"] = str(CHECKOUT)
    environ.update(env or {})
    if port is not None:
        command += ["--proxy", f"127.0.0.1:{port}"]
    return subprocess.run(command + list(args), cwd=cwd, input=input, capture_output=True, env=environ,
                          timeout=60)


class Cutter:
    """A relay to a proxy that cuts both sides after ``limit`` bytes came back."""

    def __init__(self, upstream: int, limit: int) -> None:
        self.upstream, self.limit = upstream, limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        proxy = socket.create_connection(("127.0.0.1", self.upstream))

        def forward() -> None:
            try:
                while data := client.recv(65536):
                    proxy.sendall(data)
            except OSError:
                pass

        threading.Thread(target=forward, daemon=True).start()
        sent = 0
        try:
            while sent < self.limit and (data := proxy.recv(65536)):
                client.sendall(data[: self.limit - sent])
                sent += len(data)
        except OSError:
            pass
        shut(client, proxy)
        client.close()
        proxy.close()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.mark.slow
def test_cli_round_trip_of_a_multi_mib_file(live: Any, tmp_path: Path) -> None:
    data = os.urandom(6 * 1024 * 1024 + 321)
    src = tmp_path / "src"
    src.mkdir()
    (src / "video.bin").write_bytes(data)
    r = deposito("put", "video.bin", "--name", "cli/media/video.bin", "--replicas", "3", cwd=src, port=live.port)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split()[:2] == ["stored", "cli/media/video.bin"]
    assert f"sha256={sha(data)}".encode() in r.stdout and r.stderr == b""

    dst = tmp_path / "dst"
    dst.mkdir()
    r = deposito("get", "cli/media/video.bin", cwd=dst, port=live.port)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")  # piped: no progress output
    assert sha((dst / "video.bin").read_bytes()) == sha(data)

    r = deposito("get", "cli/media/video.bin", "-o", "-", cwd=dst, port=live.port)
    assert r.returncode == 0 and sha(r.stdout) == sha(data) and r.stderr == b""

    r = deposito("get", "cli/media/video.bin", cwd=dst, port=live.port)  # would overwrite
    assert r.returncode == 1 and b"exists" in r.stderr
    assert deposito("get", "cli/media/video.bin", "--force", cwd=dst, port=live.port).returncode == 0
    assert only_files(dst) == ["video.bin"]

    r = deposito("stat", "cli/media/video.bin", "--json", cwd=dst, port=live.port)
    st = json.loads(r.stdout)
    assert (st["size"], st["sha256"], st["have"], len(st["servers"])) == (len(data), sha(data), 3, 3)
    r = deposito("ls", "cli/", "--json", cwd=dst, port=live.port)
    assert [e["name"] for e in json.loads(r.stdout)] == ["cli/media/video.bin"]
    r = deposito("servers", "--json", cwd=dst, port=live.port)
    assert sorted(s["state"] for s in json.loads(r.stdout)) == ["up", "up", "up"]
    assert deposito("rm", "cli/media/video.bin", cwd=dst, port=live.port).returncode == 0
    r = deposito("stat", "cli/media/video.bin", cwd=dst, port=live.port)
    assert r.returncode == 1 and r.stderr.startswith(b"deposito: notfound")


@pytest.mark.slow
def test_cli_put_from_stdin_and_environment(live: Any, tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 + 7)
    env = {"DEPOSITO_PROXY": f"127.0.0.1:{live.port}"}
    r = deposito("put", "-", "--name", "cli/piped data", cwd=tmp_path, input=data, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    r = deposito("get", "cli/piped data", "-o", "-", cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout == data


@pytest.mark.slow
def test_cli_exit_codes_and_no_partial_file(live: Any, tmp_path: Path) -> None:
    r = deposito("get", "cli/absent", cwd=tmp_path, port=live.port)
    assert r.returncode == 1 and r.stderr.startswith(b"deposito: notfound") and r.stderr.count(b"\n") == 1
    assert deposito("put", "-", cwd=tmp_path, port=live.port).returncode == 2
    assert deposito("frobnicate", cwd=tmp_path, port=live.port).returncode == 2
    port = free_port()
    r = deposito("ls", cwd=tmp_path, port=port)
    assert r.returncode == 1
    assert r.stderr == f"deposito: cannot reach proxy at 127.0.0.1:{port}: connection refused\n".encode()

    data = os.urandom(4 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    assert deposito("put", "big.bin", "--name", "cli/cut.bin", cwd=tmp_path, port=live.port).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    cutter = Cutter(live.port, limit=1024 * 1024)  # the transfer breaks after 1 MiB
    try:
        r = deposito("get", "cli/cut.bin", cwd=out, port=cutter.port)
    finally:
        cutter.close()
    assert r.returncode == 1 and b"lost" in r.stderr
    assert only_files(out) == []  # neither cut.bin nor a temporary file
    r = deposito("get", "cli/cut.bin", cwd=out, port=live.port)
    assert r.returncode == 0 and sha((out / "cut.bin").read_bytes()) == sha(data)


@pytest.mark.slow
def test_cli_progress_bar_on_a_terminal_only(live: Any, tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    (tmp_path / "f.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    script = Path(sys.executable).with_name("deposito")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "deposito.cli"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEPOSITO_")}
    environ["PYTHONPATH"] = str(CHECKOUT)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(command + ["--proxy", f"127.0.0.1:{live.port}", "put", "f.bin", "--name", "cli/tty.bin"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=slave, env=environ)
    os.close(slave)
    shown = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal's last writer is gone
            break
        if not data:
            break
        shown += data
    os.close(master)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.startswith(b"stored cli/tty.bin")
    assert b"tty.bin" in shown and b"8.00M" in shown  # the bar, on the terminal only
    assert b"8.00M" not in out



def test_ls_json_stays_json_for_a_name_with_a_line_separator(fake: FakeProxy, capsys: pytest.CaptureFixture[str]) -> None:
    """U+2028 is no control character, and json.dumps leaves it as it is
    (before: the output was cut into lines there, and was not JSON)."""
    name = "ls\u2028sep\u2029x"
    fake.files[name] = (b"hello", 1, 1)
    assert main(["--proxy", fake.address, "ls", "--json"]) == 0
    assert [entry["name"] for entry in json.loads(capsys.readouterr().out)] == [name]


def test_get_to_a_reader_that_went_away_stops_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """`get NAME -o - | head -c 10`: once the pipe breaks, the rest is not
    downloaded (before: all of it was, and thrown away)."""
    import hashlib
    size, sent = 480 * 65536, [0]  # 30 MiB, 64 KiB every 2 ms
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            f = conn.makefile("rb")
            conn.sendall(b"OK deposito 0.1.0 ready\r\n")
            f.readline()
            conn.sendall(f"OK {size} sha256={hashlib.sha256(bytes(size)).hexdigest()} version=1\r\n".encode())
            try:
                while sent[0] < size:
                    conn.sendall(bytes(65536))
                    sent[0] += 65536
                    time.sleep(0.002)
            except OSError:
                pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    read, write = os.pipe()
    os.close(read)  # the reader has gone
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.FileIO(write, "w", closefd=True)))
    try:
        assert main(["--proxy", f"127.0.0.1:{listener.getsockname()[1]}", "get", "f", "-o", "-"]) == 1
    finally:
        server.join(10)
        listener.close()
    assert sent[0] < size // 2, f"{sent[0]} bytes sent after the pipe broke"


def test_put_of_a_fifo_is_refused_at_once(fake: FakeProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a regular file: refused, not opened for good (before: the open
    waited for a writer that never came)."""
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(main(["--proxy", fake.address, "put", str(fifo)])),
                         daemon=True)
    t.start()
    t.join(10)
    refused_at_once = done == [1]
    if not done:  # let a waiting open go, so that the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
    assert refused_at_once and "not a regular file" in capsys.readouterr().err


def test_a_closed_standard_input_or_output_is_said_in_one_line(fake: FakeProxy, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    fake.files["f"] = (b"hello", 1, 1)
    monkeypatch.setattr(sys, "stdin", None)
    assert main(["--proxy", fake.address, "put", "-", "--name", "x"]) == 1
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["--proxy", fake.address, "get", "f", "-o", "-"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "standard input" in err and "standard output" in err
    assert "Traceback" not in err
