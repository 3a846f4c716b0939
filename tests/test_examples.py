"""The examples a newcomer starts (``make run``, ``make run-proxies``), on
real processes: once one says the cluster runs, a file can be stored at
once through every proxy, and Ctrl-C stops every process it started."""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deposito.blocking import BlockingClient
from tests.cluster import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def started(args: list[str], timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """The example started with ``args``, once it says it runs; and what it said."""
    p = subprocess.Popen([sys.executable, str(EXAMPLES / args[0]), *args[1:]], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in p.stdout], daemon=True).start()  # type: ignore[union-attr]
    said = ""
    deadline = time.monotonic() + timeout
    while "Ctrl-C stops" not in said:
        try:
            said += lines.get(timeout=0.5)
        except queue.Empty:
            if p.poll() is not None or time.monotonic() > deadline:
                p.kill()
                raise AssertionError(f"the example did not say it runs: {said}") from None
    return p, said


def stopped(p: subprocess.Popen, var: Path) -> None:
    p.send_signal(signal.SIGINT)
    assert p.wait(60) == 0
    left = subprocess.run(["pgrep", "-f", str(var)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left running: {left}"


def stored_at_once(ports: list[int], tmp_path: Path) -> None:
    data = os.urandom(100_000)
    for i, port in enumerate(ports):
        with BlockingClient(f"127.0.0.1:{port}", timeout=30) as client:
            client.put(f"f{i}", io.BytesIO(data))
    for port in ports:  # each file read through every proxy
        with BlockingClient(f"127.0.0.1:{port}", timeout=30) as client:
            for i in range(len(ports)):
                out = tmp_path / f"got{i}"
                client.get(f"f{i}", str(out))
                assert out.read_bytes() == data
                out.unlink()


@pytest.mark.slow
def test_the_local_cluster_stores_a_file_as_soon_as_it_says_it_runs(tmp_path):
    var = tmp_path / "var"
    port = free_port()
    p, said = started(["local_cluster.py", "--var", str(var), "--port", str(port), "--cluster-port",
                       str(free_port())])
    try:
        assert f"a proxy on 127.0.0.1:{port} and 3 storage servers" in said
        stored_at_once([port], tmp_path)
    finally:
        stopped(p, var)


def test_a_second_cluster_in_the_same_folder_is_refused(tmp_path):
    """A cluster started in a --var where one runs (a pidfile naming a live
    process) would share its catalog and blob folders, and remove its
    pidfiles: it is refused, and says why. A pidfile of a process gone is
    stale, and taken no notice of."""
    var = tmp_path / "var"
    var.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (var / "proxy.pid").write_text(f"{sleeper.pid}\n")
        out = subprocess.run([sys.executable, str(EXAMPLES / "local_cluster.py"), "--var", str(var), "--port",
                              str(free_port()), "--cluster-port", str(free_port())],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "already runs from" in out.stderr and "another --var" in out.stderr, out
        assert (var / "proxy.pid").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        subprocess.run(["pkill", "-f", str(var)])  # whatever it started, had it not been refused


def test_a_cluster_on_a_taken_port_says_which_and_starts_nothing(tmp_path):
    """Whatever answered on a taken client port was taken for the cluster:
    it said it runs, then stopped with no word of why."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for example in ("local_cluster.py", "several_proxies.py"):
            var = tmp_path / example
            out = subprocess.run([sys.executable, str(EXAMPLES / example), "--var", str(var), "--port", str(port),
                                  "--cluster-port", str(free_port())], capture_output=True, text=True, timeout=60)
            try:
                assert out.returncode == 1 and f"port {port} (--port" in out.stderr and "is taken" in out.stderr, out
                assert "running" not in out.stdout and not list(var.glob("*.pid")), out
            finally:
                subprocess.run(["pkill", "-f", str(var)])  # whatever it started, had it not been refused


@pytest.mark.slow
def test_several_proxies_store_a_file_as_soon_as_they_say_they_run(tmp_path):
    """(The servers join each proxy only once it has joined the others, a few
    seconds after it listens: a PUT made as soon as the example said it
    ran found no server, '2 servers needed, 0 up'.)"""
    from examples.private_postgres import PACKAGE, find_bindir

    if find_bindir() is None:
        pytest.skip(f"PostgreSQL's server programs (initdb, pg_ctl) are not installed: {PACKAGE}")
    import shutil
    import tempfile

    var = Path(tempfile.mkdtemp(prefix="deposito-example-")) / "var"  # (one PostgreSQL, run as its own user, can reach)
    var.parent.chmod(0o755)
    request_cleanup = var.parent
    port, joins = free_port(), free_port()
    p, said = started(["several_proxies.py", "--var", str(var), "--port", str(port), "--cluster-port", str(joins),
                       "--postgres-port", str(free_port())])
    try:
        assert "2 proxies on one PostgreSQL catalog" in said
        stored_at_once([port, port + 100], tmp_path)
    finally:
        try:
            stopped(p, var)
        finally:
            shutil.rmtree(request_cleanup, ignore_errors=True)
