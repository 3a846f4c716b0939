#!/usr/bin/env python3
"""Two versions of Deposito side by side, in one run: did a change slow a cell?

    git worktree add /tmp/deposito-old <commit> && make -C /tmp/deposito-old install
    .venv/bin/python bench/compare.py --old /tmp/deposito-old          # 9 runs per cell
    .venv/bin/python bench/compare.py --old /tmp/deposito-old --quick  # 3 runs, 3 s phases

Each checkout runs its own cluster (a proxy and 3 servers, from its own
.venv) and the two take turns cell by cell and run by run, the first one
rotating, with the same cells as bench/run.py: PUT and GET of 1 MiB, 64 MiB
and 1 GiB with 1-3 copies, and 4 KiB files at concurrency 1, 16 and 64
(each small-file phase 3 times, the order rotating; the median kept).
A cell is flagged when the new figure is more than 5% below the old. Then
the CPU time the proxy and the servers spend per small PUT and GET, which a
busy machine does not blur as much as it blurs rates.

Writes bench/COMPARE.md and the raw figures (bench/work/compare-<time>.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import CHECKOUT, HERE, KiB, DepositoClient, DepositoCluster, Processes, human, loadavg, machine, make_file
from run import DepositoSystem, log, parse_size, small_level, throughput

SLOWER = 0.95  # a new figure below this share of the old is flagged


def commit_of(checkout: Path) -> str:
    out = subprocess.run(["git", "log", "-1", "--format=%h %s"], capture_output=True, text=True, cwd=checkout)
    return out.stdout.strip() or str(checkout)


def side(procs: Processes, root: Path, checkout: Path, key: str) -> DepositoSystem:
    system = DepositoSystem(DepositoCluster(procs, root / key, prefix=f"{key}-", checkout=checkout))
    system.key = system.label = key
    return system


def small_rounds(systems: list[DepositoSystem], levels: list[int], duration: float,
                 rounds: int) -> dict[str, dict]:
    """Each small-file phase ``rounds`` times for each system, the order
    rotating round by round (a phase lasts seconds: the load of the machine
    drifts between two), and the median of each."""
    data = b"x" * (4 * KiB)
    seen: dict[str, dict[str, dict[str, list[float]]]] = {
        s.key: {str(level): {"put": [], "get": []} for level in levels} for s in systems}
    for level in levels:
        for i in range(rounds):
            for system in systems[i % len(systems):] + systems[:i % len(systems)]:
                got = small_level(system, level, data, 2, duration, 100_000)
                for op in ("put", "get"):
                    if op in got:
                        seen[system.key][str(level)][op].append(got[op]["ops_per_s"])
    return {key: {level: {op: {"ops_per_s": statistics.median(v), "runs": v} for op, v in ops.items() if v}
                  for level, ops in by_level.items()} for key, by_level in seen.items()}


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_op(systems: list[DepositoSystem], count: int, rounds: int) -> dict[str, dict]:
    """CPU time the proxy and the servers spend per 4 KiB PUT (2 copies) and
    GET, one client doing ``count`` of each, ``rounds`` times with the order
    rotating; the median. Steadier than a rate on a shared machine: it does
    not count the time a process waits for the cores."""
    data = b"x" * (4 * KiB)
    seen: dict[str, dict[str, list[float]]] = {s.key: {} for s in systems}
    for i in range(rounds):
        for system in systems[i % len(systems):] + systems[:i % len(systems)]:
            pids = system.pids()
            proxy = [pid for name, pid in pids.items() if name.endswith("proxy")]
            servers = [pid for name, pid in pids.items() if not name.endswith("proxy")]
            with DepositoClient(system.c.port, 60) as client:
                marks = [(sum(map(cpu_seconds, proxy)), sum(map(cpu_seconds, servers)))]
                for n in range(count):
                    client.put_bytes(f"cpu/{i}/{n}", data, 2)
                marks.append((sum(map(cpu_seconds, proxy)), sum(map(cpu_seconds, servers))))
                for n in range(count):
                    client.get_sink(f"cpu/{i}/{n}")
                marks.append((sum(map(cpu_seconds, proxy)), sum(map(cpu_seconds, servers))))
            for op, (a, b) in (("PUT", (marks[0], marks[1])), ("GET", (marks[1], marks[2]))):
                for j, part in enumerate(("proxy", "servers")):
                    seen[system.key].setdefault(f"{op} 4 KiB: {part}", []).append((b[j] - a[j]) / count * 1e6)
    return {key: {cell: {"us": statistics.median(v), "runs": v} for cell, v in cells.items()}
            for key, cells in seen.items()}


def cpu_per_mib(systems: list[DepositoSystem], path: Path, size: int, sha: str, rounds: int) -> dict[str, dict]:
    """CPU time the proxy and the servers spend per MiB of a large GET (2
    copies, put once), ``rounds`` GETs each with the order rotating; the median."""
    seen: dict[str, list[float]] = {s.key: [] for s in systems}
    for system in systems:
        system.put("cpu/large", path, size, 2, sha)
    for i in range(rounds):
        for system in systems[i % len(systems):] + systems[:i % len(systems)]:
            pids = list(system.pids().values())
            before = sum(map(cpu_seconds, pids))
            system.get("cpu/large", size)
            seen[system.key].append((sum(map(cpu_seconds, pids)) - before) / (size / (1 << 20)) * 1e6)
    return {key: {f"GET {human(size)}, per MiB: proxy and servers": {"us": statistics.median(v), "runs": v}}
            for key, v in seen.items()}


def rows(res: dict) -> list[tuple[str, float, float]]:
    """(cell, old figure, new figure) for every cell both measured."""
    out: list[tuple[str, float, float]] = []
    old, new = res["old"], res["new"]
    if "small" not in old:
        return out
    for cell, o in old.get("throughput", {}).get("cells", {}).items():
        n = new["throughput"]["cells"][cell]
        size, copies = cell.split(":")
        for op in ("put", "get"):
            if f"{op}_mibps" in o and f"{op}_mibps" in n:
                out.append((f"{op.upper()} {human(int(size))}, {copies} copies (MiB/s)",
                            o[f"{op}_mibps"], n[f"{op}_mibps"]))
    for level, o in old["small"].items():
        n = new["small"][level]
        for op in ("put", "get"):
            if op in o and op in n:
                out.append((f"{op.upper()} 4 KiB, c={level} (ops/s)", o[op]["ops_per_s"], n[op]["ops_per_s"]))
    return out


def describe(m: dict) -> str:
    return (f"{m.get('cpu', '?')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB;"
            f" Python {m.get('python')}, Twisted {m.get('twisted', '?')}")


def render(res: dict, path: Path) -> None:
    table = rows(res)
    slower = [r for r in table if r[2] < SLOWER * r[1]]
    lines = [
        "# Deposito, old and new side by side",
        "",
        f"Measured {res['started']} by `{res['command']}` ({res['runs']} run(s) per cell, median;"
        f" {res['small_duration']:.0f} s per small-file phase, {res['small_rounds']} of each, median;"
        f" {res['elapsed_s']:.0f} s in all).",
        "",
        f"- old: {res['old']['commit']}",
        f"- new: {res['new']['commit']}",
        f"- machine: {describe(res['machine'])}; load average at start {res['loadavg_start']}, at end {res['loadavg_end']}",
        "- Both clusters ran at once and took turns run by run (small files: phase by phase), the first one"
        " rotating, so a drift in the machine's load falls on both.",
        "",
        "| cell | old | new | new/old |",
        "|---|---|---|---|",
    ]
    for name, o, n in table:
        flag = " **slower**" if n < SLOWER * o else ""
        lines.append(f"| {name} | {o:,.0f} | {n:,.0f} | {n / o:.2f}x{flag} |")
    lines += ["", f"Cells more than {100 - SLOWER * 100:.0f}% below the old figure: {len(slower)}"
              + (" (" + "; ".join(r[0] for r in slower) + ")" if slower else "") + ".", ""]
    cpu = res["old"].get("cpu")
    if cpu:
        lines += ["## CPU per operation (microseconds, median; lower is better)", "",
                  f"One client, {res['cpu_count']} PUTs (2 copies) then as many GETs of 4 KiB, {res['cpu_rounds']}"
                  f" rounds; then {2 * res['cpu_rounds']} GETs of the largest file; the CPU time the processes"
                  " used, read from /proc.", "",
                  "| cell | old | new | new/old |", "|---|---|---|---|"]
        for cell, o in cpu.items():
            n = res["new"]["cpu"][cell]
            if not o["us"]:  # too little to be measured (a small file read in one tick of the CPU clock)
                lines.append(f"| {cell} | {o['us']:,.0f} | {n['us']:,.0f} | n/a |")
                continue
            flag = " **more**" if n["us"] * SLOWER > o["us"] else ""
            lines.append(f"| {cell} | {o['us']:,.0f} | {n['us']:,.0f} | {n['us'] / o['us']:.2f}x{flag} |")
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, type=Path, help="the other checkout, with its .venv installed")
    ap.add_argument("--quick", action="store_true", help="3 runs per cell, 3 s small-file phases")
    ap.add_argument("--sizes", default="1MiB,64MiB,1GiB")
    ap.add_argument("--replicas", default="1,2,3")
    ap.add_argument("--runs", type=int, help="runs per cell (median taken); default 9, quick 3")
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--small-duration", type=float, help="seconds per small-file phase (default 10, quick 3)")
    ap.add_argument("--small-rounds", type=int, help="each small-file phase this many times (default 3, quick 1)")
    ap.add_argument("--cpu-only", action="store_true", help="only the CPU time per operation, no rates")
    ap.add_argument("--small-only", action="store_true", help="no big-file cells: the small-file phases and CPU only")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(HERE / "COMPARE.md"))
    a = ap.parse_args(argv)
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    replicas = [int(r) for r in a.replicas.split(",")]
    runs = a.runs or (3 if a.quick else 9)
    levels = [int(x) for x in a.levels.split(",")]
    duration = a.small_duration or (3.0 if a.quick else 10.0)
    rounds = a.small_rounds or (1 if a.quick else 3)
    started = time.time()
    res: dict = {"started": time.strftime("%Y-%m-%d %H:%M"), "runs": runs, "small_duration": duration, "small_rounds": rounds,
                 "machine": machine(), "loadavg_start": loadavg(),
                 "command": " ".join(["bench/compare.py"] + (argv if argv is not None else sys.argv[1:])),
                 "old": {"commit": commit_of(a.old)}, "new": {"commit": commit_of(CHECKOUT)}}
    root = Path(tempfile.mkdtemp(prefix="deposito-compare-", dir=a.workdir))
    procs = Processes()
    try:
        files = {}
        for size in sizes:
            p = root / f"src-{size}.bin"
            files[size] = (p, make_file(p, size))
        log("starting both clusters")
        systems = [side(procs, root, a.old.resolve(), "old"), side(procs, root, CHECKOUT, "new")]
        if not a.cpu_only and not a.small_only:
            for key, out in throughput(systems, files, replicas, runs, True).items():
                res[key]["throughput"] = out
        if not a.cpu_only:
            for key, out in small_rounds(systems, levels, duration, rounds).items():
                res[key]["small"] = out
        res["cpu_count"], res["cpu_rounds"] = (500, 2) if a.quick else (3000, 4)
        for key, out in cpu_per_op(systems, res["cpu_count"], res["cpu_rounds"]).items():
            res[key]["cpu"] = out
        path, sha = files[max(sizes)]
        for key, out in cpu_per_mib(systems, path, max(sizes), sha, 2 * res["cpu_rounds"]).items():
            res[key]["cpu"].update(out)
        res["loadavg_end"] = loadavg()
    finally:
        procs.stop()
        shutil.rmtree(root, ignore_errors=True)
    res["elapsed_s"] = time.time() - started
    (HERE / "work").mkdir(exist_ok=True)
    jpath = HERE / "work" / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.json"
    jpath.write_text(json.dumps(res, indent=1))
    render(res, Path(a.out))
    log(f"wrote {a.out} and {jpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
