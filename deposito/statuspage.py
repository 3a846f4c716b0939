"""The proxy's status page (``/``): the cluster at a glance, as plain HTML
rendered on the server and refreshing itself; no script, so that it works
wherever a browser does."""

from __future__ import annotations

import html
import time
from typing import Any

import deposito
from deposito.events import Event
from deposito.roster import Member
from deposito.sizes import human_bytes

REFRESH_SECONDS = 5

KIND_WORDS = {"join": "joined", "down": "down", "dead": "dead", "corrupt": "corrupt copy",
              "missing": "missing copy", "inventory": "inventory", "repaired": "copy made",
              "drop": "copy dropped", "repair_failed": "repair failed", "refused": "refused",
              "rebuilt": "catalog rebuilt", "retired": "proxy retired", "denied": "wrong token"}
KIND_TONE = {"join": "good", "repaired": "info", "drop": "info", "inventory": "warn", "down": "warn",
             "dead": "bad", "corrupt": "bad", "missing": "bad", "repair_failed": "bad", "refused": "bad",
             "rebuilt": "info", "retired": "warn", "denied": "warn"}
STATE_TONE = {"up": "good", "down": "warn", "dead": "bad"}

STYLE = """
*{box-sizing:border-box}
body{font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f4f5f7}
header{background:#1d2330;color:#fff;padding:.7em 1em;display:flex;flex-wrap:wrap;gap:.3em 1em;align-items:baseline}
header h1{font-size:1.2em;margin:0}
header .when{color:#aab1c0;font-size:.85em}
main{max-width:980px;margin:0 auto;padding:.8em}
.banner{padding:.6em .9em;border-radius:6px;margin-bottom:.8em;font-weight:600}
.banner.good{background:#dff3e4;color:#185c2c}.banner.warn{background:#fff1d6;color:#7a4b00}
.banner.bad{background:#fde2e1;color:#8a1c17}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:.6em;margin-bottom:1em}
section .cards{margin-bottom:.2em}section .card{box-shadow:none;background:#f4f5f7}
.card{background:#fff;border-radius:6px;padding:.55em .8em;box-shadow:0 1px 2px #0001}
.card .n{font-size:1.45em;font-weight:650}
.card .l{color:#5b6478;font-size:.85em}
.card.warn .n{color:#a05a00}.card.bad .n{color:#b3261e}
section{background:#fff;border-radius:6px;padding:.6em .8em;margin-bottom:1em;box-shadow:0 1px 2px #0001}
h2{font-size:1.05em;margin:.2em 0 .5em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35em .5em;border-bottom:1px solid #eceef2;vertical-align:middle}
th{font-size:.8em;color:#5b6478;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.addr{display:block;color:#5b6478;font-size:.8em}
.state,.kind{display:inline-block;padding:.05em .5em;border-radius:1em;font-size:.85em;font-weight:600}
.good{background:#dff3e4;color:#185c2c}.warn{background:#fff1d6;color:#7a4b00}
.bad{background:#fde2e1;color:#8a1c17}.info{background:#e2ecfd;color:#1a4a9c}
.bar{background:#eceef2;border-radius:3px;height:.6em;min-width:90px;overflow:hidden}
.bar span{display:block;height:100%;background:#3b7be0}
.bar span.full{background:#d0442f}
.usage{font-size:.8em;color:#5b6478;white-space:nowrap}
ul.events{list-style:none;margin:0;padding:0}
ul.events li{padding:.35em 0;border-bottom:1px solid #eceef2;display:flex;gap:.5em;flex-wrap:wrap}
ul.events time{color:#5b6478;font-variant-numeric:tabular-nums}
ul.events .msg{flex:1 1 16em;overflow-wrap:anywhere}
.repeats{color:#5b6478;font-weight:600;font-size:.85em}
@media (max-width:560px){th,td{padding:.3em .3em}.usage{white-space:normal}.col-blobs{display:none}
main{padding:.5em}}
footer{color:#5b6478;font-size:.85em;padding:0 1em 1.5em;text-align:center}
footer a{color:#1a4a9c}
"""


def _banner(status: dict[str, Any]) -> tuple[str, str]:
    troubles = []
    if status["servers_up"] == 0:
        return "bad", "No storage server is up: files cannot be stored or read."
    not_up = status["servers_down"]
    if not_up:
        troubles.append(f"{not_up} server{'s' * (not_up != 1)} not up")
    if status["under"]:
        troubles.append(f"{status['under']} file{'s' * (status['under'] != 1)} below the wanted copies")
    if troubles:
        return "warn", "; ".join(troubles).capitalize() + "."
    if status["over"]:
        return "good", "Every file has its wanted copies; extra copies are being dropped."
    return "good", "Every file has its wanted copies."


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def _times(repeats: int) -> str:
    return f' <span class="repeats" title="{repeats} times in a row">\u00d7{repeats}</span>' if repeats > 1 else ""


def render_page(status: dict[str, Any], servers: list[Member], events: list[Event], now: float) -> bytes:
    """The status page: what a person needs to see at a glance, in plain HTML."""
    e = html.escape
    tone, words = _banner(status)

    def card(label: str, value: Any, warn: bool = False, bad: bool = False) -> str:
        cls = "card bad" if bad else "card warn" if warn else "card"
        return f'<div class="{cls}"><div class="n">{e(str(value))}</div><div class="l">{e(label)}</div></div>'

    total = len(servers)
    cards = "".join([
        card("files", status["files"]),
        card("stored", human_bytes(status["bytes"])),
        card("servers up", f"{status['servers_up']} / {total}", warn=status["servers_up"] < total,
             bad=status["servers_up"] == 0),
        card("under-replicated", status["under"], warn=status["under"] > 0),
        card("over-replicated", status["over"]),
        card("healthy / wanted copies", f"{status['copies_healthy']} / {status['copies_wanted']}",
             warn=status["copies_healthy"] < status["copies_wanted"]),
    ])
    repairs = "".join([
        card("queued", status["repairs_queued"]),
        card("running", status["repairs_running"]),
        card("per minute (last minute)", status["repairs_per_minute"]),
        card("done since the proxy started", status["repairs_done"]),
    ])

    rows = []
    for m in servers:
        pct = 100.0 * m.used / m.capacity if m.capacity else 0.0
        full = " full" if pct >= 90 else ""
        rows.append(
            f'<tr><td><b>{e(m.id)}</b><span class="addr">{e(m.host)}:{m.port}</span></td>'
            f'<td><span class="state {STATE_TONE.get(m.state, "warn")}">{e(m.state)}</span></td>'
            f"<td>{e(m.zone)}</td>"
            f'<td><div class="bar" title="{pct:.1f}%"><span class="{full.strip()}" style="width:{min(pct, 100):.1f}%">'
            f'</span></div><span class="usage">{human_bytes(m.used)} of {human_bytes(m.capacity)}'
            f" ({pct:.0f}%)</span></td>"
            f'<td class="num col-blobs">{m.blobs}</td></tr>')
    table = ('<div class="scroll"><table id="servers"><thead><tr><th>server</th><th>state</th><th>zone</th>'
             '<th>used / capacity</th><th class="col-blobs">blobs</th></tr></thead><tbody>' + "".join(rows)
             + "</tbody></table></div>"
             if rows else "<p>No storage server has joined yet.</p>")

    items = []
    for ev in events:
        kind = KIND_TONE.get(ev.kind, "info")
        items.append(
            f'<li><time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ev.time))}">{_clock(ev.time)}'
            f'</time><span class="kind {kind}">{e(KIND_WORDS.get(ev.kind, ev.kind))}</span>'
            f'<span class="msg">{e(ev.message)}{_times(ev.repeats)}</span></li>')
    feed = f'<ul class="events" id="events">{"".join(items)}</ul>' if items else "<p>Nothing has happened yet.</p>"

    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>Deposito: {status['servers_up']}/{total} up, {status['files']} files</title>
<style>{STYLE}</style></head>
<body><header><h1>Deposito</h1><span class="when">proxy {e(deposito.__version__)} \u00b7 updated {_clock(now)} UTC \u00b7
refreshes every {REFRESH_SECONDS}\u00a0s</span></header>
<main>
<div class="banner {tone}" id="summary">{e(words)}</div>
<div class="cards" id="counts">{cards}</div>
<section><h2>Storage servers</h2>{table}</section>
<section><h2>Repairs (copies made or dropped)</h2><div class="cards" id="repairs">{repairs}</div></section>
<section><h2>Recent events</h2>{feed}</section>
</main>
<footer><a href="/metrics">metrics</a> \u00b7 <a href="/api/status">status</a> \u00b7
<a href="/api/servers">servers</a> \u00b7 <a href="/api/files">files</a> (JSON)</footer>
</body></html>
"""
    return page.encode("utf-8")
