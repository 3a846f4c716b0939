"""Garbage collection under sustained overwrites: blob files on disk against live copies.

A cluster (a proxy and 3 servers on 127.0.0.1) holds a fixed set of names;
clients overwrite them at a steady rate for a while, and every second the
benchmark counts the blob files (and their bytes) on the servers' disks
against the live copies. Each overwrite makes the old version's copies
garbage, which the proxy deletes in the background: disk use stays near the
live data only if collection keeps pace. Run by hand:

    .venv/bin/python bench/gc.py                    # 5 minutes at 60 overwrites a second
    .venv/bin/python bench/gc.py --duration 60 --rate 200

Writes bench/GC.md and the samples as JSON in bench/work/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import DepositoClient, DepositoCluster, Processes, loadavg, log, machine  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET = 2.0  # disk use within this many times the live data, throughout


def on_disk(root: Path, servers: list[str]) -> tuple[int, int]:
    """(blob files, their bytes) on the servers' disks, not counting metadata files."""
    files = size = 0
    for sid in servers:
        blobs = root / sid / "blobs"
        for sub in os.scandir(blobs) if blobs.exists() else ():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if len(entry.name) == 32 and "." not in entry.name:
                    try:
                        size += entry.stat().st_size
                    except FileNotFoundError:
                        continue
                    files += 1
    return files, size


def overwrite(port: int, names: list[str], data: bytes, replicas: int, rate: float, until: float,
              counts: list[int], errors: list[str]) -> None:
    """Overwrite random names at ``rate`` a second until ``until``."""
    with DepositoClient(port) as c:
        slot = time.time()
        while slot < until:
            pause = slot - time.time()
            if pause > 0:
                time.sleep(pause)
            try:
                c.put_bytes(random.choice(names), data, replicas)
                counts[0] += 1
            except Exception as e:  # reported, the run goes on
                errors.append(str(e))
            slot += 1.0 / rate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", type=int, default=330, help="live names, overwritten at random")
    ap.add_argument("--size", type=int, default=64 << 10, help="bytes per file")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--rate", type=float, default=60.0, help="overwrites a second, over all clients")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of overwrites")
    ap.add_argument("--drain", type=float, default=120.0, help="seconds to wait for the last garbage after")
    ap.add_argument("--proxy-arg", action="append", default=[], help="an extra option for the proxy")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--out", default=str(HERE / "GC.md"))
    args = ap.parse_args(argv)

    procs = Processes()
    root = Path(tempfile.mkdtemp(prefix="deposito-gc-", dir=args.workdir))
    servers = ["s0", "s1", "s2"]
    try:
        cluster = DepositoCluster(procs, root, 3, proxy_args=args.proxy_arg)
        names = [f"gc/f{i:04d}" for i in range(args.names)]
        data = os.urandom(args.size)
        with DepositoClient(cluster.port) as c:
            for n in names:
                c.put_bytes(n, data, args.replicas)
        live_files = args.names * args.replicas
        live_bytes = live_files * args.size
        log(f"{args.names} names of {args.size} bytes, {args.replicas} cop{'y' if args.replicas == 1 else 'ies'}:"
            f" {live_files} live copies; overwriting at {args.rate:g}/s for {args.duration:g} s")
        counts, errors, samples = [0], [], []
        began = time.time()
        until = began + args.duration
        writers = [threading.Thread(target=overwrite, daemon=True,
                                    args=(cluster.port, names, data, args.replicas, args.rate / args.clients,
                                          until, counts, errors)) for _ in range(args.clients)]
        for w in writers:
            w.start()
        drained_at = None
        while True:
            files, size = on_disk(root, servers)
            now = time.time()
            samples.append({"t": round(now - began, 1), "files": files, "bytes": size, "puts": counts[0]})
            if now >= until and not any(w.is_alive() for w in writers):
                if files == live_files:
                    drained_at = now
                    break
                if now > until + args.drain:
                    break
            if len(samples) % 30 == 0:
                log(f"  t={now - began:5.0f}s  {counts[0]} overwrites  {files} blob files on disk"
                    f" ({files / live_files:.2f}x the live copies)")
            time.sleep(1.0)
        during = [s for s in samples if s["t"] <= args.duration]
        peak = max(during, key=lambda s: s["bytes"])
        res = {
            "args": vars(args), "machine": machine(), "load": loadavg(), "live_files": live_files, "live_bytes": live_bytes,
            "overwrites": counts[0], "rate": counts[0] / args.duration, "errors": errors[:20],
            "peak_files": peak["files"], "peak_bytes": peak["bytes"], "peak_ratio": peak["bytes"] / live_bytes,
            "mean_ratio": sum(s["bytes"] for s in during) / len(during) / live_bytes,
            "drain_seconds": None if drained_at is None else round(drained_at - until, 1),
            "samples": samples,
        }
    finally:
        procs.stop()
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    (work / f"gc-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(res, indent=1))
    render(res, Path(args.out))
    log(f"peak {res['peak_ratio']:.2f}x the live data on disk; wrote {args.out}")
    return 0


def render(res: dict, out: Path) -> None:
    a = res["args"]
    met = res["peak_ratio"] <= TARGET
    drain = "never (gave up)" if res["drain_seconds"] is None else f"{res['drain_seconds']} s"
    lines = [
        "# Garbage collection under sustained overwrites",
        "",
        f"`bench/gc.py --names {a['names']} --size {a['size']} --replicas {a['replicas']} --rate {a['rate']:g}"
        f" --clients {a['clients']} --duration {a['duration']:g}`"
        + "".join(f" `--proxy-arg={p}`" for p in a["proxy_arg"]),
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in res["machine"].items()) + f"; load average after: {res['load']}",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| live copies (bytes) | {res['live_files']} ({res['live_bytes']:,}) |",
        f"| overwrites done (rate) | {res['overwrites']:,} ({res['rate']:.1f}/s) |",
        f"| errors | {len(res['errors'])} |",
        f"| peak blob files on disk during the overwrites | {res['peak_files']} |",
        f"| peak disk use / live data | **{res['peak_ratio']:.2f}x** (target {TARGET:g}x: {'met' if met else 'NOT met'}) |",
        f"| mean disk use / live data | {res['mean_ratio']:.2f}x |",
        f"| from the last overwrite until only live copies are on disk | {drain} |",
        "",
        "Every second: blob files and bytes on the 3 servers' disks (metadata files not counted).",
        "",
        "| t (s) | overwrites | blob files | x live |",
        "|---|---|---|---|",
    ]
    step = max(1, len(res["samples"]) // 30)
    for s in res["samples"][::step]:
        lines.append(f"| {s['t']:.0f} | {s['puts']} | {s['files']} | {s['bytes'] / res['live_bytes']:.2f} |")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
