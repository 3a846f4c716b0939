"""A private PostgreSQL in a folder of its own, for trying Deposito's shared
catalog and for its tests: ``initdb`` and ``pg_ctl`` from the distribution's
PostgreSQL server package, listening on 127.0.0.1 only.

PostgreSQL refuses to run as root: run as root, the server runs as the
``postgres`` user (which the package creates), and its folder is given to it.

    python examples/private_postgres.py [--folder DIR] [--port 5433]

prints the catalog URL to give ``deposito-proxy --catalog`` and runs until
Ctrl-C, then stops the server. Its data stays in the folder.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

USER = "deposito"  # the database user, and the database
PACKAGE = "postgresql (Debian: apt-get install postgresql)"


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent  # a link on PATH: psql and createdb are beside the real one
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


class PrivatePostgres:
    """One PostgreSQL server with its data in ``folder``; :meth:`start` makes
    it (the first time) and starts it; :meth:`stop` stops it."""

    def __init__(self, folder: Path, port: int, settings: dict[str, str] | None = None) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(f"PostgreSQL's server programs (initdb, pg_ctl) are not installed: {PACKAGE}")
        self.bindir = bindir
        self.folder = Path(folder).resolve()
        self.data = self.folder / "data"
        self.port = port
        self.settings = dict(settings or {})  # server settings (-c name=value), e.g. fsync=off for tests
        self.run_as = None
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            try:
                self.run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, and there is no postgres user to run PostgreSQL as") from None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{USER}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as.pw_name, "--", *command]
        return subprocess.run(command, cwd=self.folder, check=check, capture_output=True, text=True)

    def start(self) -> str:
        """Start it (made first if the folder holds none); its URL."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.run_as is not None:
            os.chown(self.folder, self.run_as.pw_uid, self.run_as.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1" + "".join(
            f" -c {name}={value}" for name, value in self.settings.items())
        done = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "postgres.log"),
                         "-w", "-t", "60", "start", check=False)
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}"
                               f" (see {self.folder / 'postgres.log'})")
        made = self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", "postgres", "-tAc",
                         f"SELECT 1 FROM pg_database WHERE datname = '{USER}'")
        if made.stdout.strip() != "1":
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, USER)
        return self.url

    def stop(self) -> None:
        """Stop it (fast: connections are closed); its data stays."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False)

    def kill(self) -> None:
        """Stop it at once, as a crash would (immediate mode: recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop", check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="var/postgres", help="where its data, socket and log go")
    parser.add_argument("--port", type=int, default=5433, help="its port on 127.0.0.1")
    args = parser.parse_args()
    try:
        pg = PrivatePostgres(Path(args.folder), args.port)
        print(pg.start(), flush=True)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"private_postgres: {getattr(e, 'stderr', '') or e}", file=sys.stderr)
        return 1
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
