"""A real cluster for end-to-end tests: twistd processes on loopback.

Each process runs from the installed package (``twistd`` beside the test's
Python), with its own --pidfile and --logfile under a temporary folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

TWISTD = str(Path(sys.executable).with_name("twistd"))


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for port 0 and outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_given: set[int] = set()  # ports free_port handed out in this process


def free_port() -> int:
    """A port free now, below the range the kernel picks from: a process
    listening on port 0 or connecting out (a server started before its
    proxy, say) can never be given it meanwhile. Never the same port twice
    in one process (a test takes several before it starts anything), and
    each pytest-xdist worker picks from its own part of the range."""
    import random

    low = _ephemeral_low()
    start = max(1024, low - 12000)
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    share = (low - start) // workers
    start += (int(worker) % workers if worker.isdigit() else 0) * share
    for _ in range(200):
        port = random.randrange(start, start + share)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


class WireError(Exception):
    pass


class Wire:
    """The text protocol over a plain socket, as a telnet user speaks it."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout)
        self.buf = b""
        self.greeting = self.line()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self) -> str:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise WireError("connection closed")
            self.buf += data
        ln, self.buf = self.buf.split(b"\n", 1)
        return ln.rstrip(b"\r").decode()

    def exact(self, n: int) -> bytes:
        out = [self.buf[:n]]
        got = len(out[0])
        self.buf = self.buf[n:]
        while got < n:
            data = self.sock.recv(min(1 << 20, n - got))
            if not data:
                raise WireError(f"short read {got}/{n}")
            out.append(data)
            got += len(data)
        return b"".join(out)

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def cmd(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self.line()

    def multi(self, text: str) -> list[str]:
        first = self.cmd(text)
        m = re.match(r"OK (\d+)$", first)
        if not m:
            raise WireError(f"{text!r} -> {first!r}")
        return [self.line() for _ in range(int(m.group(1)))]

    def put(self, name: str, data: bytes, replicas: int | None = None, chunk: int = 1 << 20) -> str:
        r = self.cmd(f"PUT {quote(name)} {len(data)}" + (f" {replicas}" if replicas else ""))
        if not r.startswith("OK send"):
            return r
        for i in range(0, len(data), chunk):
            self.sock.sendall(data[i:i + chunk])
        return self.line()

    def get(self, name: str) -> tuple[str, bytes | None]:
        r = self.cmd(f"GET {quote(name)}")
        m = re.match(r"OK (\d+) ", r)
        if not m:
            return r, None
        return r, self.exact(int(m.group(1)))

    def stat(self, name: str) -> dict[str, str]:
        r = self.cmd(f"STAT {quote(name)}")
        if not r.startswith("OK"):
            raise WireError(r)
        return fields(r)


def quote(name: str) -> str:
    if not name or re.search(r'[\s"\\=]', name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def fields(reply: str) -> dict[str, str]:
    return {k: v for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', reply)}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(path: Path, size: int) -> str | None:
    """The sha256 of a blob file of that size; None if it is another size or gone meanwhile."""
    try:
        if path.stat().st_size != size:
            return None
        return sha(path.read_bytes())
    except FileNotFoundError:
        return None


def poll(fn, timeout: float = 20, every: float = 0.1):
    deadline = time.monotonic() + timeout
    value = fn()
    while not value and time.monotonic() < deadline:
        time.sleep(every)
        value = fn()
    return value


class Cluster:
    """A proxy and storage servers ``s0``, ``s1``... each a twistd process.

    :meth:`add_proxy` gives another proxy, with its own ports and catalog,
    that the servers join too: the two share the servers and this folder."""

    def __init__(self, root: Path, proxy_args: tuple[str, ...] = (), server_args: tuple[str, ...] = (),
                 name: str = "proxy") -> None:
        self.root = root
        self.name = name  # the proxy's pidfile, log and --data are named after it
        self.port = free_port()
        self.cport = free_port()
        self.proxy_args = list(proxy_args)
        self.server_args = list(server_args)
        self.proxy: subprocess.Popen | None = None
        self.servers: dict[str, subprocess.Popen] = {}
        self.joined: list[Cluster] = [self]  # the proxies a server started from here joins

    def add_proxy(self, name: str, *proxy_args: str) -> Cluster:
        """Another proxy (not started) that servers started afterwards join too."""
        other = Cluster(self.root, proxy_args or tuple(self.proxy_args), tuple(self.server_args), name)
        other.servers, other.joined = self.servers, self.joined
        self.joined.append(other)
        return other

    def twistd(self, name: str, args: list[str]) -> subprocess.Popen:
        pidfile = self.root / f"{name}.pid"
        if pidfile.exists():  # left by a kill -9
            pidfile.unlink()
        with open(self.root / f"{name}.out", "ab") as out:  # what twistd says before its log opens (a bad option)
            return subprocess.Popen(
                [TWISTD, "-n", "--pidfile", str(pidfile), "--logfile", str(self.root / f"{name}.log")] + args,
                cwd=self.root, stdout=out, stderr=subprocess.STDOUT)

    def start_proxy(self, *extra: str) -> None:
        self.proxy = self.twistd(self.name, [
            "deposito-proxy", "--port", f"tcp:{self.port}:interface=127.0.0.1",
            "--cluster-port", f"tcp:{self.cport}:interface=127.0.0.1",
            "--data", str(self.root / self.name)] + self.proxy_args + list(extra))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                if self.proxy.poll() is not None:
                    break
                time.sleep(0.05)
        said = (self.root / f"{self.name}.out").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not start:\n{said}" + self.log(self.name)[-3000:])

    def server_dir(self, sid: str) -> Path:
        return self.root / sid

    def start_server(self, sid: str, *extra: str) -> None:
        d = self.server_dir(sid)
        d.mkdir(exist_ok=True)
        joins = [] if "--proxy" in extra else [  # the proxies named in extra, instead
            arg for proxy in self.joined for arg in ("--proxy", f"tcp:127.0.0.1:{proxy.cport}")]
        self.servers[sid] = self.twistd(sid, ["deposito-server"] + joins + [
            "--port", "tcp:0:interface=127.0.0.1", "--data", str(d), "--name", sid,
            "--zone", f"z{sid}"] + self.server_args + list(extra))

    def start(self, nservers: int = 3) -> Cluster:
        try:
            self.start_proxy()
            for i in range(nservers):
                self.start_server(f"s{i}")
            self.wait_up(nservers)
        except BaseException:
            self.stop()
            raise
        return self

    def wire(self) -> Wire:
        return Wire(self.port)

    def states(self) -> dict[str, str]:
        with self.wire() as w:
            return {ln.split()[0]: ln.split()[2] for ln in w.multi("SERVERS")}

    def up(self) -> list[str]:
        return sorted(s for s, state in self.states().items() if state == "up")

    def wait_up(self, n: int, timeout: float = 30) -> None:
        def enough() -> bool:
            try:
                return len(self.up()) >= n
            except (OSError, WireError):
                return False
        if not poll(enough, timeout):
            raise RuntimeError(f"{n} servers did not join {self.name}:\n" + self.log(self.name)[-3000:])

    def kill(self, sid: str, sig: int = signal.SIGKILL) -> None:
        p = self.servers.pop(sid)
        p.send_signal(sig)
        p.wait(15)

    def kill_proxy(self, sig: int = signal.SIGKILL) -> None:
        assert self.proxy is not None
        self.proxy.send_signal(sig)
        try:
            self.proxy.wait(15)
        except subprocess.TimeoutExpired:  # stuck: where, in every thread (deposito.diagnostics), then gone
            self.proxy.send_signal(signal.SIGUSR2)
            time.sleep(1.0)
            self.proxy.kill()
            self.proxy.wait(15)
            stacks = self.root / self.name / "stacks.txt"
            raise AssertionError(f"the proxy did not stop within 15 s on signal {sig}; its threads:\n"
                                 + (stacks.read_text()[-6000:] if stacks.exists() else "(no stacks written)"))

    def blob_files(self, sid: str) -> list[Path]:
        """The blob data files on a server's disk (not their metadata)."""
        return [p for p in (self.server_dir(sid) / "blobs").rglob("*")
                if p.is_file() and re.fullmatch(r"[0-9a-f]{32}", p.name)]

    def server_folders(self) -> list[str]:
        """The ids of every server that has had a folder here, running or not."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and re.fullmatch(r"s\d+", p.name))

    def holders(self, data: bytes) -> list[str]:
        """The servers whose disk holds a blob with exactly these bytes."""
        digest = sha(data)
        out = []
        for sid in self.server_folders():
            if any(_digest(f, len(data)) == digest for f in self.blob_files(sid)):
                out.append(sid)
        return out

    def copies(self, servers: Iterable[str] | None = None) -> Counter[str]:
        """How many blob files with each content (by sha256) the disks of
        ``servers`` hold (default: every server folder here), in one pass."""
        counted: Counter[str] = Counter()
        for sid in self.server_folders() if servers is None else servers:
            for f in self.blob_files(sid):
                try:
                    counted[sha(f.read_bytes())] += 1
                except FileNotFoundError:  # deleted meanwhile
                    pass
        return counted

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else "(no log)"

    def stop(self) -> None:
        procs = [p for p in list(self.servers.values()) + [self.proxy] if p is not None]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.servers.clear()


def answer(port: int, command: str, timeout: float = 10) -> tuple[str, float]:
    """One command on a new connection: its reply line and how long it took."""
    started = time.monotonic()
    try:
        with Wire(port, timeout=timeout) as w:
            return w.cmd(command), time.monotonic() - started
    except (OSError, WireError) as e:
        return f"no answer: {e}", time.monotonic() - started


def incoming(cluster: Cluster, sid: str) -> list[Path]:
    """The temp files of writes under way on a server's disk."""
    d = cluster.server_dir(sid) / "incoming"
    try:
        return [p for p in d.iterdir() if p.is_file()]
    except FileNotFoundError:
        return []


def shut(*sockets: socket.socket) -> None:
    """End both directions of each socket (a relay's two sides), whatever state it is in."""
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def incoming_bytes(cluster: Cluster, sid: str) -> int:
    """How many bytes the writes under way on a server have on its disk."""
    total = 0
    for p in incoming(cluster, sid):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass  # finished meanwhile
    return total


def serving_servers(cluster: Cluster, reader_ports: Iterable[int] = ()) -> list[str]:
    """Servers with a blob's bytes queued in a socket (from /proc/net/tcp).

    A reader that does not read makes the bytes back up: in the serving
    server's blob-port connection when the proxy relays them, or in the
    reader's own socket, held by the serving server, when the proxy handed it
    that socket (deposito.protocols.handoff). Readers are those of the text
    port, and of ``reader_ports`` (S3's, HTTP's). Idle connections have
    nothing queued."""
    readers = {cluster.port, *reader_ports}
    with cluster.wire() as w:
        ports = {int(ln.split()[1].rsplit(":", 1)[1]): ln.split()[0] for ln in w.multi("SERVERS")}
    busy = set()
    queued_to_readers = set()  # socket inodes
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for row in open(table).read().splitlines()[1:]:
                cols = row.split()
                port = int(cols[1].rsplit(":", 1)[1], 16)
                if cols[3] != "01" or int(cols[4].split(":")[0], 16) == 0:
                    continue
                if port in ports:
                    busy.add(ports[port])
                elif port in readers:
                    queued_to_readers.add(cols[9])
    for sid, proc in cluster.servers.items():
        if proc.poll() is None and queued_to_readers & socket_inodes(proc.pid):
            busy.add(sid)
    return sorted(busy)


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds."""
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[8:-1])
    except OSError:
        pass
    return out
