#!/usr/bin/env python3
"""The catalog in PostgreSQL, and several proxies on it, against one proxy on
SQLite: small-file rates and big-file throughput, all in one run.

    .venv/bin/python bench/proxies.py            # about 6 minutes
    .venv/bin/python bench/proxies.py --quick    # 64 MiB, 2 s phases, 1 round: under a minute

Three clusters run side by side, each a real twistd process per proxy and
per storage server on 127.0.0.1 (bench/harness.py), with 3 servers of their
own:

- ``sqlite``: one proxy, its catalog in SQLite (the default);
- ``postgresql``: one proxy, its catalog in a database of a private
  PostgreSQL that the benchmark starts (examples/private_postgres.py, with
  its default settings: every commit is fsynced, as SQLite's is);
- ``two proxies``: two proxies sharing a second database of that
  PostgreSQL, every server joined to both, the clients split between them.

Measured, the clusters taking turns round by round (the first one rotating,
so that a drift in the machine's load falls on all alike): PUT then GET of
4 KiB files with 2 copies by 1 and 16 clients (each with its own connection,
``--duration`` seconds per phase, ``--rounds`` times), and PUT and GET of one
1 GiB file with 2 copies (``--big-runs`` times) on ``sqlite`` and
``postgresql``. Medians, with the lowest and highest of the runs, and the
ratios against the targets: PostgreSQL at least 0.8x SQLite's small-file
rates and 0.95x its 1 GiB throughput; two proxies no slower than one.

Writes bench/PROXIES.md and the raw figures (bench/work/proxies-<time>.json;
``--render JSON`` writes the report again from one). Every process it starts,
PostgreSQL included, is stopped at the end, also on Ctrl-C or an error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness import (CHECKOUT, HERE, HOST, DepositoCluster, Processes, disk_of, fmt, free_port, human, loadavg,
                     machine, make_file)
from run import DepositoSmall, DepositoSystem, log, parse_size, small_level, throughput

sys.path.insert(0, str(CHECKOUT / "examples"))
from private_postgres import PrivatePostgres  # noqa: E402

SMALL_TARGET = 0.8  # PostgreSQL's small-file rates against SQLite's
BIG_TARGET = 0.95  # PostgreSQL's 1 GiB throughput against SQLite's
TWO_TARGET = 1.0  # two proxies against one, on PostgreSQL
PHASES = ("place", "body", "copies", "commit")  # of a PUT, as its proxy's /metrics times them


class Cluster(DepositoSystem):
    """run.py's Deposito, whose small-file clients go to each of the
    cluster's proxies in turn, the first to the first proxy, and put names
    under the round's prefix, so that each round stores new files rather
    than new versions of the last round's (whose old copies would be
    garbage collected meanwhile)."""

    def __init__(self, cluster: DepositoCluster, key: str) -> None:
        super().__init__(cluster)
        self.key = self.label = key
        self.begin("warm-up")

    def put_phases(self) -> dict[str, tuple[float, float]]:
        """The first proxy's PUT phases so far: (seconds, PUTs) of each, from its /metrics."""
        from prometheus_client.parser import text_string_to_metric_families  # installed with Deposito

        with urllib.request.urlopen(f"http://{HOST}:{self.c.http_port}/metrics", timeout=30) as r:
            text = r.read().decode()
        got = {phase: [0.0, 0.0] for phase in PHASES}
        for family in text_string_to_metric_families(text):
            if family.name == "deposito_put_phase_seconds":
                for sample in family.samples:
                    if sample.labels.get("via") == "text" and sample.labels.get("phase") in got:
                        if sample.name.endswith("_sum"):
                            got[sample.labels["phase"]][0] = sample.value
                        elif sample.name.endswith("_count"):
                            got[sample.labels["phase"]][1] = sample.value
        return {phase: (t, n) for phase, (t, n) in got.items()}

    def begin(self, round_name: str) -> None:
        """The next clients are a new round's."""
        self.round = round_name
        self.next_port = itertools.cycle(self.c.ports)

    def small_session(self) -> DepositoSmall:
        return RoundSession(next(self.next_port), f"{self.round}/")


class RoundSession(DepositoSmall):
    def __init__(self, port: int, prefix: str) -> None:
        super().__init__(port)
        self.prefix = prefix

    def put(self, key: str, data: bytes, replicas: int):
        return super().put(self.prefix + key, data, replicas)


def database(url: str, name: str) -> str:
    """A new empty database on the PostgreSQL server of ``url`` (a database
    there to connect to): its URL."""
    import psycopg  # installed with Deposito, which needs it for this very catalog

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "low": min(values), "high": max(values), "runs": values} \
        if values else {}


def small_rounds(systems: list[Cluster], levels: list[int], size: int, replicas: int, duration: float,
                 rounds: int) -> dict[str, dict]:
    """Each small-file level ``rounds`` times for every system, the order
    rotating round by round; ops/s of each PUT and GET phase, and their spread."""
    data = os.urandom(size)
    log("warming up each cluster for 2 s (not counted)")
    for s in systems:
        small_level(s, 1, data, replicas, 1.0, 1_000_000)
    seen: dict[str, dict[str, dict[str, list[float]]]] = {
        s.key: {str(level): {"put": [], "get": []} for level in levels} for s in systems}
    errors: dict[str, dict[str, list[str]]] = {s.key: {str(level): [] for level in levels} for s in systems}
    phases: dict[str, dict[str, dict[str, list[float]]]] = {
        s.key: {str(level): {phase: [] for phase in PHASES} for level in levels} for s in systems}
    for level in levels:
        for i in range(rounds):
            for s in systems[i % len(systems):] + systems[:i % len(systems)]:
                s.begin(f"round{i}")
                before = s.put_phases()
                got = small_level(s, level, data, replicas, duration, 1_000_000)
                after = s.put_phases()
                for phase in PHASES:  # the mean of this round's PUTs through the first proxy, in ms
                    puts = after[phase][1] - before[phase][1]
                    if puts:
                        phases[s.key][str(level)][phase].append((after[phase][0] - before[phase][0]) / puts * 1e3)
                if got.get("error"):
                    errors[s.key][str(level)].append(got["error"])
                for op in ("put", "get"):
                    if op in got:
                        seen[s.key][str(level)][op].append(got[op]["ops_per_s"])
    return {key: {"levels": {level: {op: spread(v) for op, v in ops.items()} for level, ops in by_level.items()},
                  "phases": {level: {phase: spread(v) for phase, v in by_phase.items()}
                             for level, by_phase in phases[key].items()},
                  "errors": errors[key]}
            for key, by_level in seen.items()}  # errors: by level, the failures of each round that had any


def big_files(systems: list[Cluster], path: Path, size: int, sha: str, replicas: int,
              runs: int) -> dict[str, dict]:
    """PUT and GET of one big file, ``runs`` times each, the systems taking
    turns (run.py's throughput); MiB/s of every run, and their spread."""
    out = throughput(systems, {size: (path, sha)}, [replicas], runs, verify=True)
    result = {}
    for key, measured in out.items():
        cell = measured["cells"][f"{size}:{replicas}"]
        result[key] = {
            "put": spread([size / (1 << 20) / t for t in cell["put_s"]]),
            "get": spread([size / (1 << 20) / t for t in cell["get_s"]]),
            "verified": cell.get("verified"), "error": cell.get("error")}
    return result


# ---------------------------------------------------------------- report

def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def met(value: float | None, target: float) -> str:
    return "n/a" if value is None else ("yes" if value >= target else "**no**")


def target(what: str, mine: dict, theirs: dict, wanted: float, failed: bool = False) -> str:
    """A row of the targets' table: ``mine`` against ``theirs`` (medians and
    the runs' extremes), met when the ratio of the medians is ``wanted`` or
    more; not judged when clients failed in either."""
    r = ratio(mine.get("median"), theirs.get("median"))
    measured = f"{fmt(r, 2)}x"
    if r is not None and len(mine["runs"]) + len(theirs["runs"]) > 2:
        measured += f" ({fmt(ratio(mine['low'], theirs['high']), 2)}-{fmt(ratio(mine['high'], theirs['low']), 2)}x)"
    return f"| {what} | {measured} | {'n/a: clients failed, see below' if failed else met(r, wanted)} |"


def figure(s: dict, digits: int = 0) -> str:
    """A median with the lowest and highest run beside it."""
    if not s:
        return "n/a"
    if len(s["runs"]) == 1:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['low'], digits)}-{fmt(s['high'], digits)})"


def render(res: dict, out_md: Path) -> None:
    small, big = res.get("small") or {}, res.get("big") or {}
    levels = [str(level) for level in res["levels"]]
    m = res["machine"]

    def rate(key: str, level: str, op: str) -> dict:
        return ((small.get(key) or {}).get("levels") or {}).get(level, {}).get(op) or {}

    def median(s: dict) -> float | None:
        return s.get("median")

    def failed(key: str, level: str) -> bool:
        return bool(((small.get(key) or {}).get("errors") or {}).get(level))

    def cell(key: str, level: str, op: str) -> str:
        return figure(rate(key, level, op)) + (" (clients failed)" if failed(key, level) else "")

    L: list[str] = ["# Several proxies and the catalog in PostgreSQL\n"]
    L.append(f"Measured {res['started']} by `{res['command']}` ({res['elapsed_s']:.0f} s in all): "
             f"small files {human(res['small_size'])} with {res['replicas']} copies, {res['duration']:g} s per "
             f"phase, {res['rounds']} round(s) per cell; {human(res['big_size'])} with {res['replicas']} copies, "
             f"{res['big_runs']} run(s) of PUT and GET. Each figure is the median of its runs, the lowest and "
             "highest in brackets. Every figure below is from that one run.\n")
    L.append("## Machine\n")
    L.append(f"- CPU: {m.get('cpu', '?')}, {m.get('cores')} cores; memory {m.get('memory_gib')} GiB; "
             f"Linux {m.get('kernel')}")
    L.append(f"- Disk of the data: {res.get('disk')}")
    L.append(f"- Python {m.get('python')}, Twisted {m.get('twisted', '?')}, "
             f"{res.get('postgres_version', 'PostgreSQL ?')}; Deposito checkout {m.get('git', '?')}")
    L.append(f"- Load average (1, 5, 15 min) at start {res.get('loadavg_start', '?')}, before the small files "
             f"{res.get('loadavg_small', '?')}, before the big file {res.get('loadavg_big', '?')}, at end "
             f"{res.get('loadavg_end', '?')}")
    L.append("- Every process (the clients, 4 proxies, 9 storage servers, PostgreSQL) runs on this machine; "
             "the three clusters are up at once, idle but for their turn.\n")

    L.append("## Targets\n")
    L.append("Each ratio is of the medians; in brackets, the lowest and highest it could be from the runs "
             "(the worst run of one against the best of the other, and the reverse): how much of it this "
             "machine's noise could make.\n")
    L.append("| target | measured | met? |")
    L.append("|---|---|---|")
    small_name, big_name = human(res["small_size"]), human(res["big_size"])
    for level in levels:
        for op in ("put", "get"):
            L.append(target(f"PostgreSQL >= {SMALL_TARGET}x SQLite, {small_name} {op.upper()} at {level} client(s)",
                            rate("postgresql", level, op), rate("sqlite", level, op), SMALL_TARGET,
                            failed("postgresql", level) or failed("sqlite", level)))
    for op in ("put", "get"):
        L.append(target(f"PostgreSQL >= {BIG_TARGET}x SQLite, {big_name} {op.upper()}",
                        (big.get("postgresql") or {}).get(op) or {}, (big.get("sqlite") or {}).get(op) or {},
                        BIG_TARGET))
    for level in levels:
        for op in ("put", "get"):
            L.append(target(f"two proxies >= one (PostgreSQL), {small_name} {op.upper()} at {level} client(s)",
                            rate("two", level, op), rate("postgresql", level, op), TWO_TARGET,
                            failed("two", level) or failed("postgresql", level)))
    L.append("")

    L.append(f"## Small files ({human(res['small_size'])}, {res['replicas']} copies; ops/s)\n")
    L.append("Each client has its own connection and PUTs for the whole phase, then GETs what it put. With two "
             "proxies the clients are split between them, one each in turn (so one client uses one proxy).\n")
    L.append("| clients | op | one proxy, SQLite | one proxy, PostgreSQL | PostgreSQL/SQLite "
             "| two proxies, PostgreSQL | two/one |")
    L.append("|---|---|---|---|---|---|---|")
    for level in levels:
        for op in ("put", "get"):
            sq, pg, two = rate("sqlite", level, op), rate("postgresql", level, op), rate("two", level, op)
            L.append(f"| {level} | {op.upper()} | {cell('sqlite', level, op)} | {cell('postgresql', level, op)} | "
                     f"{fmt(ratio(median(pg), median(sq)), 2)}x | {cell('two', level, op)} | "
                     f"{fmt(ratio(median(two), median(pg)), 2)}x |")
    L.append("")

    if any((small.get(key) or {}).get("phases") for key in small):
        L.append("## Where a small PUT's time goes (ms, the mean of each round's PUTs)\n")
        L.append("From the first proxy's `/metrics` (`deposito_put_phase_seconds`), before and after each round: "
                 "`place` (servers picked and reached), `body` (the client's bytes, while the catalog allocates "
                 "the version), `copies` (from the last byte until every copy is durable and verified, after the "
                 "version if it came later), "
                 "`commit` (the catalog's commit). The median of the rounds, the lowest and highest in brackets; "
                 "with two proxies, the PUTs through the first one.\n")
        L.append("| clients | phase | one proxy, SQLite | one proxy, PostgreSQL | PostgreSQL - SQLite "
                 "| two proxies, PostgreSQL |")
        L.append("|---|---|---|---|---|---|")

        def phase(key: str, level: str, name: str) -> dict:
            return (((small.get(key) or {}).get("phases") or {}).get(level) or {}).get(name) or {}

        for level in levels:
            for name in PHASES:
                sq, pg = median(phase("sqlite", level, name)), median(phase("postgresql", level, name))
                more = fmt(pg - sq, 2) if sq is not None and pg is not None else "n/a"
                L.append(f"| {level} | {name} | {figure(phase('sqlite', level, name), 2)} | "
                         f"{figure(phase('postgresql', level, name), 2)} | {more} | "
                         f"{figure(phase('two', level, name), 2)} |")
        L.append("")

    L.append(f"## One big file ({human(res['big_size'])}, {res['replicas']} copies; MiB/s)\n")
    L.append("| op | one proxy, SQLite | one proxy, PostgreSQL | PostgreSQL/SQLite |")
    L.append("|---|---|---|---|")
    for op in ("put", "get"):
        sq, pg = (big.get("sqlite") or {}).get(op) or {}, (big.get("postgresql") or {}).get(op) or {}
        L.append(f"| {op.upper()} | {figure(sq)} | {figure(pg)} | {fmt(ratio(median(pg), median(sq)), 2)}x |")
    L.append("")

    problems = []
    for key, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL"), ("two", "two proxies")):
        for level, failures in ((small.get(key) or {}).get("errors") or {}).items():
            problems += [f"- {label}, small files at {level} client(s): {e}" for e in failures]
        b = big.get(key) or {}
        if b.get("error"):
            problems.append(f"- {label}, big file: {b['error']}")
        if b.get("verified") is False:
            problems.append(f"- {label}, big file: the bytes read back differ from the file put")
    problems += [f"- {d}" for d in res.get("died") or []]
    if res.get("error"):
        problems.append(f"- not finished: {res['error']}")
    if problems:
        L.append("Failures in this run:\n")
        L += problems
        L.append("")

    L.append("## How it was measured\n")
    L.append("- The clients are bench/run.py's: the text protocol on plain sockets from threads of one "
             "process; a PUT is timed from its request line to `OK stored` (every copy durable), a GET to its "
             "last byte. The big file streams from a generated file on disk into a discarding sink, is deleted "
             "after each run, and its last GET is repeated untimed with its sha256 checked.")
    L.append("- PostgreSQL runs with its default settings (fsync on, synchronous commit), on the same disk, "
             "so a catalog change is as durable as in SQLite.")
    L.append("- Every process shares the same cores: one proxy's Python runs on one core at a time, and a "
             "second proxy can use another only while the clients, the servers and PostgreSQL leave it idle. "
             "On a machine "
             "of its own, each proxy would bring its own cores and network, and the database would be what "
             "they share.\n")
    L.append("Commands:\n")
    L.append("```")
    L.append(res["command"])
    for line in res.get("commands") or []:
        L.append(line)
    L.append("```")
    L.append(f"\nRaw figures: `{res.get('json', '')}` (bench/work/ is not committed).\n")
    out_md.write_text("\n".join(L))


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 MiB, 2 s phases, 1 round, 1 run: for trying it")
    ap.add_argument("--levels", default="1,16", help="how many small-file clients at once (default 1,16)")
    ap.add_argument("--duration", type=float, help="seconds per small-file phase (default 6, quick 2)")
    ap.add_argument("--rounds", type=int, help="times each small-file cell is measured (default 3, quick 1)")
    ap.add_argument("--small-size", default="4KiB", help="size of the small files (default 4KiB)")
    ap.add_argument("--big-size", help="size of the big file (default 1GiB, quick 64MiB)")
    ap.add_argument("--big-runs", type=int, help="PUTs and GETs of the big file (default 5, quick 1)")
    ap.add_argument("--replicas", type=int, default=2, help="copies of every file (default 2)")
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="where the temporary data goes")
    ap.add_argument("--keep", action="store_true", help="keep the data and logs")
    ap.add_argument("--out", default=str(HERE / "PROXIES.md"))
    ap.add_argument("--render", metavar="JSON", help="only write the report again from a saved JSON")
    a = ap.parse_args(argv)

    if a.render:
        render(json.loads(Path(a.render).read_text()), Path(a.out))
        log(f"wrote {a.out}")
        return 0

    res: dict = {
        "started": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "quick": a.quick,
        "levels": [int(x) for x in a.levels.split(",")],
        "duration": a.duration or (2.0 if a.quick else 6.0), "rounds": a.rounds or (1 if a.quick else 3),
        "small_size": parse_size(a.small_size), "big_size": parse_size(a.big_size or ("64MiB" if a.quick else "1GiB")),
        "big_runs": a.big_runs or (1 if a.quick else 5), "replicas": a.replicas,
        "machine": machine(), "loadavg_start": loadavg(),
        "command": " ".join([".venv/bin/python", "bench/proxies.py"] + (argv if argv is not None else sys.argv[1:])),
    }
    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="deposito-proxies-", dir=a.workdir))
    # a folder of its own, which PrivatePostgres gives to the postgres user when run as root
    pg_root = Path(tempfile.mkdtemp(prefix="deposito-proxies-pg-", dir=a.workdir))
    res["disk"] = disk_of(root)
    procs = Processes()
    postgres = None
    clusters: list[DepositoCluster] = []

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        log(f"data under {root}, PostgreSQL under {pg_root}")
        big = root / "big.bin"
        sha = make_file(big, res["big_size"])
        log("starting PostgreSQL")
        postgres = PrivatePostgres(pg_root, free_port())
        postgres.start()
        res["postgres_version"] = subprocess.run([postgres.bindir / "postgres", "--version"], capture_output=True,
                                                 text=True).stdout.strip()
        log("starting 3 clusters of 3 servers: one proxy on SQLite, one on PostgreSQL, two on PostgreSQL")
        sqlite = DepositoCluster(procs, root / "sqlite", prefix="sqlite-", http=True)
        clusters.append(sqlite)
        pg = DepositoCluster(procs, root / "postgresql", prefix="pg-", http=True,
                             proxy_args=["--catalog", database(postgres.url, "one")])
        clusters.append(pg)
        two = DepositoCluster(procs, root / "two", prefix="two-", proxies=2, http=True,
                              proxy_args=["--catalog", database(postgres.url, "two")])
        clusters.append(two)
        res["commands"] = [f"# PostgreSQL: examples/private_postgres.py in {pg_root}, databases one and two at "
                           f"{postgres.url.rsplit('/', 1)[0]}"] + [c for cluster in clusters for c in cluster.commands]
        systems = [Cluster(sqlite, "sqlite"), Cluster(pg, "postgresql"), Cluster(two, "two")]

        log(f"small files: {human(res['small_size'])}, {a.replicas} copies, clients {res['levels']}, "
            f"{res['rounds']} round(s) of {res['duration']:g} s phases")
        res["loadavg_small"] = loadavg()
        res["small"] = small_rounds(systems, res["levels"], res["small_size"], a.replicas, res["duration"],
                                    res["rounds"])
        log(f"one big file: {human(res['big_size'])}, {a.replicas} copies, {res['big_runs']} run(s)")
        res["loadavg_big"] = loadavg()
        res["big"] = big_files(systems[:2], big, res["big_size"], sha, a.replicas, res["big_runs"])
        res["died"] = [f"{name} exited with {procs.procs[name].returncode} during the run"
                       for cluster in clusters for name in cluster.names
                       if name in procs.procs and procs.procs[name].poll() is not None]
        res["loadavg_end"] = loadavg()
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        raise
    except Exception as e:  # noqa: BLE001 - reported, and what was measured before it still written
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"failed: {res['error']}")
    finally:
        procs.stop()
        if postgres is not None:
            postgres.stop()
        if a.keep:
            log(f"kept {root} and {pg_root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(pg_root, ignore_errors=True)

    res["elapsed_s"] = time.time() - started
    jdir = HERE / "work"
    jdir.mkdir(exist_ok=True)
    jpath = jdir / f"proxies-{time.strftime('%Y%m%d-%H%M%S')}.json"
    res["json"] = str(jpath.relative_to(CHECKOUT))
    jpath.write_text(json.dumps(res, indent=1))
    render(res, Path(a.out))
    log(f"wrote {a.out} and {jpath}")
    return 1 if res.get("error") else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(f"bench: stopped ({e or 'interrupted'}); every process it started was stopped", file=sys.stderr)
        sys.exit(130)
