"""What the examples that start a cluster share: real ``twistd`` processes on
loopback, each with its own pidfile and log in one folder, waited for until
their ports answer, and stopped together on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

TWISTD = str(Path(sys.executable).with_name("twistd"))
DEPOSITO = str(Path(sys.executable).with_name("deposito"))
AWS = str(Path(sys.executable).with_name("aws"))  # the aws CLI of the test extras


class LocalProcesses:
    """The processes an example started, by name, with their pidfiles and
    logs in ``var``. From now on SIGTERM and SIGHUP (the terminal closed)
    are taken as Ctrl-C: each raises KeyboardInterrupt, so that the example
    stops what it started. The processes run in their own session: Ctrl-C
    reaches the example alone, which then stops each process once (a
    twistd told to stop twice logs a critical error)."""

    def __init__(self, var: Path) -> None:
        self.var = var
        self.procs: dict[str, subprocess.Popen] = {}
        var.mkdir(parents=True, exist_ok=True)
        for stale in var.glob("*.pid"):
            try:
                pid = int(stale.read_text().strip())
                os.kill(pid, 0)
            except PermissionError:
                pass  # it runs, as another user
            except (ValueError, OSError):
                stale.unlink()  # its process is gone
                continue
            sys.exit(f"{stale.stem} (pid {pid}) already runs from {var}: a cluster is running there;"
                     " stop it (Ctrl-C where it was started), or give this one another --var")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.default_int_handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored

    @staticmethod
    def check_free(ports: dict[str, int]) -> None:
        """Exit, saying which, when one of ``ports`` (by the option that
        names it) is taken on 127.0.0.1: whatever answers there would be
        taken for the cluster started."""
        for option, port in ports.items():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as twistd binds: TIME_WAIT is no bar
                try:
                    s.bind(("127.0.0.1", port))
                except OSError as e:
                    sys.exit(f"port {port} ({option}) is taken ({e.strerror}): give another with {option}")

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """``twistd -n`` with ``args`` (a plugin and its options), its pidfile
        and log named after ``name``."""
        p = subprocess.Popen(
            [TWISTD, "-n", "--pidfile", str(self.var / f"{name}.pid"), "--logfile", str(self.var / f"{name}.log")]
            + args, cwd=self.var, start_new_session=True)
        self.procs[name] = p
        return p

    def stopped(self) -> list[str]:
        """The names of the processes that are no longer running."""
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def wait_for_ports(self, ports: list[int], timeout: float = 30) -> list[str]:
        """Wait until something answers on each of ``ports`` on 127.0.0.1,
        for at most ``timeout`` seconds; the names of the processes that
        stopped meanwhile (none when all went well)."""
        deadline = time.monotonic() + timeout
        waiting = list(ports)
        while waiting and time.monotonic() < deadline and not self.stopped():
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), 1).close()
                waiting.pop(0)
            except OSError:
                time.sleep(0.2)
        return self.stopped()

    def wait_for_servers(self, ports: list[int], count: int, timeout: float = 30) -> list[str]:
        """Wait until the proxy on each of ``ports`` sees ``count`` storage
        servers up (STATUS), for at most ``timeout`` seconds: a PUT made as
        soon as the example says it runs finds its servers. As
        :meth:`wait_for_ports`, the names of the processes that stopped."""
        from deposito.blocking import BlockingClient
        from deposito.errors import DepositoError

        deadline = time.monotonic() + timeout
        waiting = list(ports)
        while waiting and time.monotonic() < deadline and not self.stopped():
            try:
                with BlockingClient(f"127.0.0.1:{waiting[0]}", timeout=5) as client:
                    if client.status().servers_up >= count:
                        waiting.pop(0)
                        continue
            except (OSError, DepositoError):
                pass
            time.sleep(0.2)
        return self.stopped()

    def serve(self, keep_going: bool = False) -> int:
        """Run until one of the processes stops by itself: 1 (see the logs).
        With ``keep_going``, a process that stops is reported and the others
        go on, until none is left. Ctrl-C and SIGTERM end it sooner, with
        KeyboardInterrupt."""
        reported: set[str] = set()
        while True:
            for name in self.stopped():
                if name in reported:
                    continue
                if not keep_going:
                    print("a process stopped; stopping the rest (see the logs)", file=sys.stderr)
                    return 1
                print(f"{name} stopped (exit status {self.procs[name].returncode}); the others go on",
                      file=sys.stderr, flush=True)
                reported.add(name)
            if len(reported) == len(self.procs):
                print("every process stopped (see the logs)", file=sys.stderr)
                return 1
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to every process still running, SIGKILL to any still there 10 s later."""
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def server_args(var: Path, i: int, cluster_ports: list[int]) -> list[str]:
    """Storage server ``server<i>`` in zone ``zone<i>``, on any free port,
    its data in ``var``, joined to the proxy at each of ``cluster_ports``."""
    d = var / f"server{i}"
    d.mkdir(exist_ok=True)
    joins = [arg for port in cluster_ports for arg in ("--proxy", f"tcp:127.0.0.1:{port}")]
    return ["deposito-server", *joins, "--port", "tcp:0:interface=127.0.0.1", "--data", str(d),
            "--name", f"server{i}", "--zone", f"zone{i}"]


def uninterrupted(work: Callable[[], None]) -> None:
    """Do ``work`` (stopping what was started) with Ctrl-C and SIGTERM
    ignored, so that pressing Ctrl-C again does not leave half of it running."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    work()
