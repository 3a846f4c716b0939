"""What the benchmarks share: processes, memory and CPU of a process, a text
protocol client on plain sockets, a Deposito cluster of real twistd
processes on 127.0.0.1, and a description of the machine.

Nothing here imports the project: the benchmarks speak to it over the wire
(docs/protocol.md) and run the installed twistd plugins.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
VENV_BIN = CHECKOUT / ".venv" / "bin"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CHUNK = 1 * MiB
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def human(n: int) -> str:
    for unit, f in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"


def log(msg: str, stream=None) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=stream or sys.stdout, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[:3]} exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), 1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} did not open in {timeout}s")


# ---------------------------------------------------------------- processes, memory, CPU

class Processes:
    """Every process a benchmark started, so that all of them are stopped."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list, cwd: Path, logfile: Path, env=None) -> subprocess.Popen:
        out = open(logfile, "ab")
        p = subprocess.Popen([str(a) for a in argv], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        out.close()
        self.procs[name] = p
        return p

    def stop(self, names=None, grace: float = 15) -> list[str]:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the names of those that had to be killed."""
        names = list(self.procs) if names is None else names
        procs = [(n, self.procs.pop(n)) for n in names if n in self.procs]
        for _, p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.time() + grace
        killed = []
        for n, p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
                killed.append(n)
        return killed


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")


def _status_field(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss(pid: int) -> int | None:
    """VmHWM in bytes, or None once the process is gone."""
    return _status_field(pid, "VmHWM")


def rss(pid: int) -> int | None:
    """VmRSS in bytes, or None once the process is gone."""
    return _status_field(pid, "VmRSS")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process so far (/proc/PID/stat), or None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15


class PeakWatch:
    """Peak RSS of named processes over a stretch of the run."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        for pid in pids.values():
            reset_peak(pid)

    def read(self) -> dict[str, int | None]:
        return {name: peak_rss(pid) for name, pid in self.pids.items()}


class LogFollower:
    """What a process writes to its log from now on, across twistd's rotations
    (at 1 MB the log is renamed to ``<log>.1`` and a new one begun)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = open(path, "rb")
        self.f.seek(0, os.SEEK_END)
        self.ino = os.fstat(self.f.fileno()).st_ino
        self.carry = b""

    def lines(self) -> list[str]:
        """The whole lines written since the last call."""
        data = self.f.read()
        try:
            rotated = os.stat(self.path).st_ino != self.ino
        except FileNotFoundError:
            rotated = False
        if rotated:
            data += self.f.read()
            self.f.close()
            self.f = open(self.path, "rb")
            self.ino = os.fstat(self.f.fileno()).st_ino
            data += self.f.read()
        data = self.carry + data
        cut = data.rfind(b"\n")
        self.carry = data[cut + 1:]
        return data[:cut].decode("utf-8", "replace").splitlines() if cut >= 0 else []

    def close(self) -> None:
        self.f.close()


# ---------------------------------------------------------------- data files

def make_file(path: Path, size: int) -> str:
    """A file of random (incompressible) bytes; returns its sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            part = os.urandom(min(left, CHUNK))
            f.write(part)
            h.update(part)
            left -= len(part)
    return h.hexdigest()


def stream_file(path: Path, send) -> int:
    """Send a file through send(memoryview) in CHUNK pieces; bytes sent."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return total
            send(view[:n])
            total += n


# ---------------------------------------------------------------- Deposito client

class ProtoError(Exception):
    pass


class DepositoClient:
    """The text protocol over a plain socket, as docs/protocol.md writes it."""

    def __init__(self, port: int, timeout: float = 120) -> None:
        self.sock = socket.create_connection((HOST, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.greeting = self.line()
        if not self.greeting.startswith("OK deposito"):
            raise ProtoError(f"greeting: {self.greeting!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def line(self) -> str:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ProtoError("connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def cmd(self, request: str) -> str:
        self.sock.sendall(request.encode() + b"\r\n")
        return self.line()

    def multi(self, request: str) -> list[str]:
        first = self.cmd(request)
        if not first.startswith("OK "):
            raise ProtoError(f"{request}: {first}")
        return [self.line() for _ in range(int(first.split()[1]))]

    def count_lines(self, request: str) -> tuple[str, int]:
        """A multi-line request whose lines are counted, never kept: (first line, lines read)."""
        first = self.cmd(request)
        if not first.startswith("OK "):
            return first, 0
        want = int(first.split()[1])
        got = 0
        data, self.buf = self.buf, b""
        while True:
            n = data.count(b"\n")
            if got + n >= want:
                cut = -1
                for _ in range(want - got):
                    cut = data.index(b"\n", cut + 1)
                self.buf = data[cut + 1:]
                return first, want
            got += n
            data = self.sock.recv(1 << 20)
            if not data:
                raise ProtoError(f"{request}: closed after {got} of {want} lines")

    def put_file(self, name: str, path: Path, size: int, replicas: int) -> str:
        reply = self.cmd(f"PUT {name} {size} {replicas}")
        if reply != f"OK send {size}":
            raise ProtoError(f"PUT {name}: {reply}")
        stream_file(path, self.sock.sendall)
        reply = self.line()
        if not reply.startswith("OK stored"):
            raise ProtoError(f"PUT {name}: {reply}")
        return reply

    def put_bytes(self, name: str, data: bytes, replicas: int) -> str:
        reply = self.cmd(f"PUT {name} {len(data)} {replicas}")
        if reply != f"OK send {len(data)}":
            raise ProtoError(f"PUT {name}: {reply}")
        self.sock.sendall(data)
        reply = self.line()
        if not reply.startswith("OK stored"):
            raise ProtoError(f"PUT {name}: {reply}")
        return reply

    def get_sink(self, name: str, hasher=None) -> tuple[int, str]:
        """GET into a discarding sink; (bytes received, reply line)."""
        reply = self.cmd(f"GET {name}")
        if not reply.startswith("OK "):
            raise ProtoError(f"GET {name}: {reply}")
        size = int(reply.split()[1])
        got = min(len(self.buf), size)
        if hasher and got:
            hasher.update(self.buf[:got])
        self.buf = self.buf[got:]
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while got < size:
            n = self.sock.recv_into(view, min(CHUNK, size - got))
            if not n:
                raise ProtoError(f"GET {name}: closed after {got} of {size} bytes")
            if hasher:
                hasher.update(view[:n])
            got += n
        return got, reply


def reply_field(reply: str, key: str) -> str | None:
    m = re.search(rf"(?:^| ){key}=(\S+)", reply)
    return m.group(1) if m else None


def reply_fields(reply: str) -> dict[str, str]:
    """The ``key=value`` fields of a reply line."""
    return dict(w.split("=", 1) for w in reply.split() if "=" in w)


def http_get(port: int, path: str, timeout: float = 120) -> tuple[int, int]:
    """GET a path from 127.0.0.1:port; (status, body bytes)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, len(r.read())
    finally:
        conn.close()


# ---------------------------------------------------------------- Deposito cluster

def find_twistd(checkout: Path = CHECKOUT) -> tuple[Path, dict | None] | None:
    """A checkout's twistd (in its .venv) and the environment under which it lists the plugins."""
    twistd = checkout / ".venv" / "bin" / "twistd"
    if not twistd.exists():
        return None
    for env in (None, dict(os.environ, PYTHONPATH=str(checkout))):
        out = subprocess.run([twistd, "--help"], capture_output=True, text=True, cwd="/", env=env).stdout
        if "deposito-proxy" in out and "deposito-server" in out:
            return twistd, env
    return None


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[tuple[Path, Processes]]:
    """A temporary folder and a :class:`Processes` to start things in it: at
    the end (also on an error), every process is stopped and the folder removed."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Processes()
    try:
        yield root, procs
    finally:
        procs.stop()
        shutil.rmtree(root, ignore_errors=True)


class DepositoCluster:
    """A proxy and storage servers, each a ``twistd -n`` process with its own
    --pidfile, --logfile and --data under ``root``, listening on 127.0.0.1.

    Processes are named ``<prefix>proxy`` and ``<prefix><server id>``; each
    keeps its command line, so it can be stopped and started again on the
    same data.

    With ``proxies`` > 1, the proxies ``<prefix>proxy``, ``<prefix>proxy2``,
    ... take ``proxy_args`` alike (a ``--catalog`` they share) and every
    server joins each; ``port`` and ``cport`` are the first one's, ``ports``
    and ``cports`` all of them.
    """

    def __init__(self, procs: Processes, root: Path, nservers: int = 3, proxy_args: list | None = None,
                 http: bool = False, prefix: str = "dep-", checkout: Path = CHECKOUT, proxies: int = 1) -> None:
        found = find_twistd(checkout)
        if not found:
            raise RuntimeError("the deposito twistd plugins are not installed "
                               f"({checkout / '.venv/bin/twistd'} --help lists no deposito-proxy)")
        self.twistd, self.env = found
        self.procs = procs
        self.root = root
        self.prefix = prefix
        root.mkdir(parents=True, exist_ok=True)
        self.port, self.cport = free_port(), free_port()
        self.http_port = free_port() if http else None
        self.ports, self.cports = [self.port], [self.cport]
        self.names: list[str] = []
        self.commands: list[str] = []
        self.argv: dict[str, list] = {}
        args = ["deposito-proxy", "--port", f"tcp:{self.port}:interface={HOST}",
                "--cluster-port", f"tcp:{self.cport}:interface={HOST}", "--data", root / "proxy"]
        if http:
            args += ["--http", f"tcp:{self.http_port}:interface={HOST}"]
        self._start(prefix + "proxy", args + list(proxy_args or []))
        for n in range(2, proxies + 1):
            port, cport = free_port(), free_port()
            self.ports.append(port)
            self.cports.append(cport)
            self._start(f"{prefix}proxy{n}", ["deposito-proxy", "--port", f"tcp:{port}:interface={HOST}",
                                               "--cluster-port", f"tcp:{cport}:interface={HOST}",
                                               "--data", root / f"proxy{n}"] + list(proxy_args or []))
        for port, name in zip(self.ports, self.proxy_names):
            wait_port(port, self.procs.procs[name])
        for i in range(nservers):
            self.add_server(f"s{i}", f"z{i}", wait=False)
        self.wait_up(nservers)

    @property
    def proxy(self) -> str:
        return self.prefix + "proxy"

    @property
    def proxy_names(self) -> list[str]:
        return [self.proxy] + [f"{self.proxy}{n}" for n in range(2, len(self.ports) + 1)]

    def add_server(self, sid: str, zone: str, wait: bool = True) -> str:
        """Start a storage server ``sid`` in its own zone; its process name."""
        d = self.root / sid
        d.mkdir(exist_ok=True)
        name = self.prefix + sid
        joins = [arg for cport in self.cports for arg in ("--proxy", f"tcp:{HOST}:{cport}")]
        self._start(name, ["deposito-server", *joins,
                           "--port", f"tcp:0:interface={HOST}", "--data", d, "--name", sid, "--zone", zone])
        if wait:
            self.wait_up(len(self.up_servers()) + 1)
        return name

    def _start(self, name: str, args: list) -> None:
        short = name.removeprefix(self.prefix)
        argv = [self.twistd, "-n", "--pidfile", self.root / f"{short}.pid",
                "--logfile", self.root / f"{short}.log"] + args
        self.commands.append(" ".join(str(a) for a in argv))
        self.argv[name] = argv
        self.start(name)
        if name not in self.names:
            self.names.append(name)

    def start(self, name: str) -> subprocess.Popen:
        """Start a process of the cluster (again), with its command line of the first time."""
        short = name.removeprefix(self.prefix)
        return self.procs.start(name, self.argv[name], self.root, self.root / f"{short}.out", env=self.env)

    def stop_one(self, name: str, grace: float = 60) -> tuple[float, bool]:
        """SIGTERM one process and wait for it: (seconds it took to exit, whether it had to be killed)."""
        t = time.perf_counter()
        killed = self.procs.stop([name], grace)
        return time.perf_counter() - t, bool(killed)

    def kill(self, name: str) -> None:
        """SIGKILL one process, as a crash would."""
        p = self.procs.procs.pop(name)
        p.kill()
        p.wait(10)

    def pid(self, name: str) -> int:
        return self.procs.procs[name].pid

    def logfile(self, name: str) -> Path:
        return self.root / f"{name.removeprefix(self.prefix)}.log"

    def servers(self, timeout: float = 30, port: int | None = None) -> list[list[str]]:
        """SERVERS (of the first proxy, unless ``port``), one list of words per server."""
        with DepositoClient(port or self.port, timeout) as c:
            return [ln.split() for ln in c.multi("SERVERS")]

    def up_servers(self) -> list[str]:
        with contextlib.suppress(OSError, ProtoError):
            return [w[0] for w in self.servers() if len(w) > 2 and w[2] == "up"]
        return []

    def wait_up(self, n: int, timeout: float = 30) -> None:
        """Wait until every proxy has ``n`` servers up."""
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            for name in self.names:
                p = self.procs.procs.get(name)
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}: {self.tail(name)}")
            try:
                ups = [len([w for w in self.servers(5, port) if len(w) > 2 and w[2] == "up"]) for port in self.ports]
                if min(ups) >= n:
                    return
                last = " and ".join(f"{up} up" for up in ups)
            except (OSError, ProtoError) as e:
                last = str(e)
            time.sleep(0.3)
        raise RuntimeError(f"{n} servers did not join in {timeout}s ({last})")

    def tail(self, name: str) -> str:
        p = self.logfile(name)
        return p.read_text(errors="replace")[-1500:] if p.exists() else "(no log)"

    def pids(self) -> dict[str, int]:
        return {n.removeprefix(self.prefix): self.procs.procs[n].pid for n in self.names if n in self.procs.procs}

    def stop(self) -> None:
        self.procs.stop(self.names)


# ---------------------------------------------------------------- machine

def machine() -> dict:
    info: dict = {"python": platform.python_version(), "kernel": platform.release(), "cores": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / (1 << 20), 1)
    with contextlib.suppress(Exception):
        import twisted
        info["twisted"] = twisted.__version__
    with contextlib.suppress(Exception):
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True, cwd=CHECKOUT).stdout.strip()
        if subprocess.run(["git", "status", "--porcelain", "--", "deposito", "twisted"],
                          capture_output=True, text=True, cwd=CHECKOUT).stdout.strip():
            info["git"] += " + uncommitted changes"
    return info


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def disk_of(path: Path) -> str:
    best, dev, fs = "", "?", "?"
    with contextlib.suppress(OSError):
        real = str(path.resolve())
        for line in open("/proc/mounts"):
            parts = line.split()
            if real == parts[1] or real.startswith(parts[1].rstrip("/") + "/"):
                if len(parts[1]) >= len(best):
                    best, dev, fs = parts[1], parts[0], parts[2]
    return f"{dev} ({fs}) mounted on {best}"


# ---------------------------------------------------------------- report

def fmt(x, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    return f"{x:,.{digits}f}"


def mib(n) -> str:
    return "n/a" if n is None else f"{n / MiB:.1f}"


def pyplot():
    """matplotlib's pyplot drawing to files (Agg), or None (logged) when
    matplotlib is not installed: then the report has no chart."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no matplotlib: no chart (pip install -r bench/requirements.txt)")
        return None
    return plt
