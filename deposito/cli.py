"""The ``deposito`` command: the text protocol for a person at a shell.

Exit status: 0 on success, 1 on an ERR from the proxy, a lost or refused
connection, or a local file problem (one line on stderr), 2 on a usage error.
Progress bars go to stderr, and only when stderr is a terminal.

With several proxies (``--proxy a:7000,b:7000``) the command fails over as
:mod:`deposito.blocking` says: reads go on at the next proxy, a write cut off
after it was sent is reported as of unknown outcome, never made twice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

import attrs

from deposito import __version__
from deposito.blocking import BlockingClient
from deposito.errors import Denied, DepositoError
from deposito.localfile import AsideFile
from deposito.proxies import ProxiesUnreachable, parse_addresses, reason, show
from deposito.protocols.words import digits, quote
from deposito.sizes import human_bytes
from deposito.wire import CHUNK_SIZE, PAGE_SIZE, ConnectionLost, Entry, Progress

PROG = "deposito"
DEFAULT_PROXY = "127.0.0.1:7000"
LS_PAGE = PAGE_SIZE  # names asked per LIST by ls


class _Failed(Exception):
    """A failure already worded for the user: exit 1 with this message."""


def _proxy_addresses(text: str) -> list[tuple[str, int]]:
    try:
        return parse_addresses(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (HOST:PORT, or several separated by commas)") from None


def _replica_count(text: str) -> int:
    if not digits(text, 2) or not 1 <= int(text) <= 16:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 16, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``deposito`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Store, fetch and inspect files in a Deposito cluster through its proxy.",
        epilog="Exit status: 0 on success; 1 on an error from the proxy, a lost or refused "
               "connection, or a local file problem; 2 on a usage error.",
    )
    parser.add_argument(
        "--proxy", metavar="HOST:PORT[,...]", type=_proxy_addresses, default=None,
        help="the proxy's client port, or several proxies' separated by commas: the first "
             "that answers is used, the next ones if it fails (default: $DEPOSITO_PROXY, "
             "else %s)" % DEFAULT_PROXY)
    parser.add_argument(
        "--token", metavar="T", default=os.environ.get("DEPOSITO_TOKEN") or None,
        help="access token, sent with AUTH when connecting (default: $DEPOSITO_TOKEN)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    put = commands.add_parser(
        "put", help="store a file",
        description="Store a file. It is acknowledged only once every replica is durable. "
                    "Storing an existing name makes a new version of it.")
    put.add_argument("path", metavar="PATH", help="the file to store; - reads standard input (needs --name)")
    put.add_argument("--name", help="the name to store it under (default: the last component of PATH)")
    put.add_argument("--replicas", metavar="N", type=_replica_count,
                     help="how many copies to keep, 1 to 16 (default: the proxy's)")

    get = commands.add_parser(
        "get", help="fetch a file",
        description="Fetch the newest version of a file. It is written beside its destination "
                    "and renamed into place once complete and verified, so a failed get leaves "
                    "no partial file.")
    get.add_argument("name", metavar="NAME", help="the name of the file")
    get.add_argument("-o", "--output", metavar="PATH",
                     help="where to write it: a file (replaced if it exists), a folder (the "
                          "file goes in it under NAME's last segment), or - for standard output "
                          "(default: ./<last segment of NAME>)")
    get.add_argument("--force", action="store_true",
                     help="replace an existing file when writing under NAME's last segment")

    stat = commands.add_parser("stat", help="show a file's version, size, checksum and copies",
                               description="Show the newest version of a file and where its copies are.")
    stat.add_argument("name", metavar="NAME", help="the name of the file")
    stat.add_argument("--json", action="store_true", help="print one JSON object")

    ls = commands.add_parser("ls", help="list files",
                             description="List files in name order: size, wanted copies, "
                                         "healthy copies, name. Names are asked for a page "
                                         "at a time and printed as they come.")
    ls.add_argument("prefix", metavar="PREFIX", nargs="?", default="",
                    help="list only names starting with PREFIX")
    ls.add_argument("--json", action="store_true", help="print one JSON array")

    rm = commands.add_parser("rm", help="delete a file", description="Delete a file and all its copies.")
    rm.add_argument("name", metavar="NAME", help="the name of the file")

    replicas = commands.add_parser(
        "replicas", help="change how many copies a file keeps",
        description="Set how many copies of a file the cluster keeps. Copies are added or "
                    "removed in the background unless --wait.")
    replicas.add_argument("name", metavar="NAME", help="the name of the file")
    replicas.add_argument("count", metavar="COUNT", type=_replica_count, help="the number of copies wanted")
    replicas.add_argument("--wait", action="store_true",
                          help="return only once the file has COUNT healthy copies (exit 1 if "
                               "the cluster cannot get there)")

    servers = commands.add_parser("servers", help="list the storage servers",
                                  description="List the storage servers: id, address, state "
                                              "(up, down, dead), space used, capacity, blobs, zone.")
    servers.add_argument("--json", action="store_true", help="print one JSON array")

    status = commands.add_parser("status", help="show the cluster's counts",
                                 description="Show files, bytes, servers up and down, files "
                                             "under and over their wanted copies, and repairs "
                                             "queued and running.")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(subparsers=commands.choices)
    return parser


# ---------------------------------------------------------------- output


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _table(rows: list[list[str]], right: int, at_least: Sequence[int] = ()) -> list[int]:
    """Print rows in columns; the first ``right`` columns aligned right.
    Columns are at least ``at_least`` wide; returns the widths used."""
    if not rows:
        return list(at_least)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    widths = [max([w, *at_least[i:i + 1]]) for i, w in enumerate(widths)]
    for row in rows:
        cells = [c.rjust(w) if i < right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells + [row[-1]]))
    return widths


@contextmanager
def _progress(label: str) -> Iterator[Optional[Progress]]:
    """A progress callback drawing a bar on stderr when it is a terminal; None otherwise.

    The bar appears with the first bytes, when the total is known.
    """
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    try:
        sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        sized = False
    width: dict[str, Any] = {"dynamic_ncols": True} if sized else {"ncols": 80}
    bars: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=label, file=sys.stderr, leave=False, **width))
        bars[0].update(done - bars[0].n)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


# ---------------------------------------------------------------- commands


def _put(client: BlockingClient, args: argparse.Namespace) -> None:
    if args.path == "-":
        if sys.stdin is None:
            raise _Failed("cannot read the standard input: it is closed")
        with tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool, CHUNK_SIZE)
            spool.seek(0)
            with _progress(args.name) as progress:
                stored = client.put(args.name, spool, replicas=args.replicas, progress=progress)
    else:
        name = args.name if args.name is not None else os.path.basename(os.path.normpath(args.path))
        try:  # (opening a FIFO would wait for a writer)
            if not stat.S_ISREG(os.stat(args.path).st_mode):
                raise _Failed(f"cannot read {args.path}: not a regular file")
            source = open(args.path, "rb")
        except OSError as e:
            raise _Failed(f"cannot read {args.path}: {e.strerror}") from None
        with source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                raise _Failed(f"cannot read {args.path}: not a regular file")
            try:
                source.seek(0, os.SEEK_END)
                source.seek(0)
            except OSError:  # its size is known only once read (/proc): read it whole first, as the standard input
                spool = tempfile.TemporaryFile()
                with spool:
                    shutil.copyfileobj(source, spool, CHUNK_SIZE)
                    spool.seek(0)
                    with _progress(name) as progress:
                        stored = client.put(name, spool, replicas=args.replicas, progress=progress)
            else:
                with _progress(name) as progress:
                    try:
                        stored = client.put(name, source, replicas=args.replicas, progress=progress)
                    except ValueError as e:  # it changed size while it was read (or told a wrong one, as in /sys)
                        raise _Failed(f"cannot put {args.path}: {e}, nothing was stored (its size changed while"
                                      " it was read?)") from None
    print(f"stored {quote(stored.name)} version={stored.version} size={stored.size} "
          f"sha256={stored.sha256} replicas={stored.replicas}")


def _last_segment(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _get_target(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, bool]:
    """Where get writes, and whether it may replace an existing file there."""
    default = _last_segment(args.name)
    usable = default not in ("", ".", "..")
    if args.output is None or os.path.isdir(args.output):
        if not usable:
            parser.error(f"cannot make a file name from {args.name!r}; give -o PATH")
        path = default if args.output is None else os.path.join(args.output, default)
        return path, args.force
    return args.output, True


def _get(client: BlockingClient, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.output == "-":
        if sys.stdout is None:
            raise _Failed("cannot write to the standard output: it is closed")
        out = sys.stdout.buffer
        sys.stdout.flush()
        with _progress(_last_segment(args.name)) as progress:
            client.get(args.name, out, progress=progress)
        out.flush()
        return
    path, overwrite = _get_target(args, parser)
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        # a device or a pipe (/dev/null, a FIFO): written into, as -o - writes to stdout
        try:
            with open(path, "wb") as special:
                with _progress(_last_segment(args.name)) as progress:
                    client.get(args.name, special, progress=progress)
        except OSError as e:
            raise _Failed(f"cannot write {path}: {e.strerror}") from None
        return
    path = os.path.realpath(path) if os.path.islink(path) else path  # the file a link names is replaced, not the link
    if not overwrite and os.path.lexists(path):
        raise _Failed(f"{path} exists; use --force to replace it, or -o PATH")
    try:
        aside = AsideFile(path, overwrite=overwrite)
    except OSError as e:
        raise _Failed(f"cannot write {path}: {e.strerror}") from None
    try:
        with _progress(_last_segment(args.name)) as progress:
            client.get(args.name, aside, progress=progress)
    except BaseException:
        aside.discard()
        raise
    try:
        aside.commit()
    except FileExistsError:
        raise _Failed(f"{path} exists; use --force to replace it, or -o PATH") from None
    except OSError as e:
        raise _Failed(f"cannot write {path}: {e.strerror}") from None


def _stat(client: BlockingClient, args: argparse.Namespace) -> None:
    st = client.stat(args.name)
    if args.json:
        _print_json(attrs.asdict(st, value_serializer=lambda _i, _a, v: list(v) if isinstance(v, tuple) else v))
        return
    print(f"name:     {st.name}")
    print(f"size:     {st.size} ({human_bytes(st.size)})")
    print(f"sha256:   {st.sha256}")
    print(f"version:  {st.version}")
    print(f"replicas: {st.replicas} wanted, {st.have} healthy")
    print(f"servers:  {', '.join(st.servers) if st.servers else '-'}")


def _ls(client: BlockingClient, args: argparse.Namespace) -> None:
    """One page of names at a time, printed as it comes: the table's columns
    are as wide as the widest cell so far (they widen from page to page, never
    narrow), and --json is one array written element by element."""
    pages = _pages(client, args.prefix)
    if args.json:
        first = True
        for page in pages:
            for e in page:
                sys.stdout.write(("[\n" if first else ",\n") + _indented(attrs.asdict(e)))
                first = False
            sys.stdout.flush()
        print("[]" if first else "\n]")
        return
    widths: list[int] = []
    for page in pages:
        rows = [[str(e.size), str(e.wanted), str(e.have), e.name] for e in page]
        if not widths:
            rows.insert(0, ["SIZE", "WANTED", "HAVE", "NAME"])
        widths = _table(rows, right=3, at_least=widths)
        sys.stdout.flush()


def _pages(client: BlockingClient, prefix: str) -> Iterator[list[Entry]]:
    """The names starting with ``prefix``, a LIST page at a time."""
    after = ""
    while True:
        page = client.list_page(prefix, after, LS_PAGE)
        if page:
            yield page
        if len(page) < LS_PAGE:
            return
        after = page[-1].name


def _indented(value: Any) -> str:
    """``value`` as json.dumps(..., indent=2) writes it as an element of a list."""
    return "\n".join("  " + line for line in json.dumps(value, indent=2, ensure_ascii=False).split("\n"))


def _rm(client: BlockingClient, args: argparse.Namespace) -> None:
    client.delete(args.name)


def _replicas(client: BlockingClient, args: argparse.Namespace) -> None:
    count = client.replicas(args.name, args.count, wait=args.wait)
    print(f"{count.name}: replicas={count.replicas} have={count.have}")


def _servers(client: BlockingClient, args: argparse.Namespace) -> None:
    servers = client.servers()
    if args.json:
        _print_json([attrs.asdict(s) for s in servers])
        return
    if servers:
        _table([["ID", "ADDRESS", "STATE", "USED", "CAPACITY", "BLOBS", "ZONE"]]
               + [[s.id, s.address, s.state, human_bytes(s.used), human_bytes(s.capacity), str(s.blobs), s.zone]
                  for s in servers], right=0)


def _status(client: BlockingClient, args: argparse.Namespace) -> None:
    status = client.status()
    if args.json:
        _print_json(attrs.asdict(status))
        return
    for key, value in attrs.asdict(status).items():
        print(f"{key + ':':17}{value}")


COMMANDS: dict[str, Callable[..., None]] = {
    "put": _put, "stat": _stat, "ls": _ls, "rm": _rm,
    "replicas": _replicas, "servers": _servers, "status": _status,
}


def command() -> int:
    """The ``deposito`` command: :func:`main`, and a SIGTERM or SIGHUP ends it
    as Ctrl-C does (a get cut off so leaves no partial file either)."""
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _terminated)
    return main()


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: a get's file aside is removed


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``deposito`` command with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        own = args.subparsers[args.command]
        if args.command == "put" and args.path == "-" and args.name is None:
            own.error("put - needs --name NAME")
        if args.command == "put" and args.name == "":
            own.error("--name cannot be empty")
        if args.command == "get" and args.output != "-":
            _get_target(args, own)
        if args.proxy is None:  # checked here, so that a wrong one is not said to be --proxy's
            try:
                args.proxy = _proxy_addresses(os.environ.get("DEPOSITO_PROXY") or DEFAULT_PROXY)
            except argparse.ArgumentTypeError as e:
                parser.error(f"$DEPOSITO_PROXY: {e}")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2

    def fail(message: str) -> int:
        print(f"{PROG}: {message}", file=sys.stderr)
        return 1

    proxies: list[tuple[str, int]] = args.proxy
    try:
        try:
            client = BlockingClient(proxies, token=args.token)
        except ProxiesUnreachable as e:
            return fail(str(e))
        except ConnectionLost as e:  # it accepted, and then said nothing (hung, say) or closed
            return fail(f"proxy at {','.join(map(show, proxies))} did not greet: {e.message}")
        except DepositoError as e:
            return fail(f"proxy at {','.join(map(show, proxies))} refused the connection: {e}")
        except OSError as e:
            return fail(f"cannot reach proxy at {show(proxies[0])}: {reason(e)}")
        with client:
            if args.command == "get":
                _get(client, args, parser)
            else:
                COMMANDS[args.command](client, args)
        return 0
    except _Failed as e:
        return fail(str(e))
    except ConnectionLost as e:
        return fail(f"{e.message} (proxy at {show(client.address)})")
    except ProxiesUnreachable as e:
        return fail(str(e))
    except Denied as e:
        return fail(str(e) + ("" if args.token else " (give a token: --token T, or $DEPOSITO_TOKEN)"))
    except DepositoError as e:
        return fail(str(e))
    except BrokenPipeError:
        # The reader of our output went away: stop quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as e:
        return fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    except ValueError as e:  # the file put changed size, or cannot be read as announced
        return fail(str(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(command())
