from __future__ import annotations

import os

import pytest

from deposito import proxy_tap, server_tap


@pytest.fixture(autouse=True)
def in_a_fresh_folder(tmp_path, monkeypatch):
    """--data's default is made where the process runs: here, a new folder."""
    monkeypatch.chdir(tmp_path)


def parse(options_class, args):
    o = options_class()
    o.parseOptions(args)
    return o


def test_proxy_defaults():
    o = parse(proxy_tap.Options, [])
    assert (o["port"], o["cluster-port"], o["replicas"]) == ("tcp:7000", "tcp:7001", 2)
    assert o["data"] == os.path.abspath("deposito-proxy")
    assert o["catalog"] == "sqlite:"


def test_proxy_catalog_urls():
    url = "postgresql://deposito@db.example:5433/depot?sslmode=require&connect_timeout=5"
    assert parse(proxy_tap.Options, ["--catalog", url])["catalog"] == url
    assert parse(proxy_tap.Options, ["--catalog", "sqlite"])["catalog"] == "sqlite:"


def test_server_defaults_and_capacity_units():
    o = parse(server_tap.Options, ["--capacity", "10G", "--name", "disk-1", "--zone", "rack.2"])
    assert o["capacity"] == 10 << 30 and o["proxy"] == ["tcp:127.0.0.1:7001"] and o["port"] == "tcp:0"
    assert parse(server_tap.Options, ["--capacity", "1048576"])["capacity"] == 1 << 20


def test_a_server_joins_every_proxy_named():
    o = parse(server_tap.Options, ["--proxy", "tcp:10.0.0.1:7001", "--proxy", "unix:/run/deposito-b.sock"])
    assert o["proxy"] == ["tcp:10.0.0.1:7001", "unix:/run/deposito-b.sock"]
    assert parse(server_tap.Options, ["--proxy=tcp:10.0.0.2:7001"])["proxy"] == ["tcp:10.0.0.2:7001"]
    assert parse(server_tap.Options, ["--proxy", "tcp:host=h:port=65535:timeout=3"])["proxy"] == [
        "tcp:host=h:port=65535:timeout=3"]


@pytest.mark.parametrize("cls,args,option", [
    (proxy_tap.Options, ["--replicas", "17"], "--replicas"),
    (proxy_tap.Options, ["--replicas", "two"], "--replicas"),
    (proxy_tap.Options, ["--cluster-port", "bogus:1"], "--cluster-port"),
    (proxy_tap.Options, ["--tokens", "/no/such/file"], "--tokens"),
    (proxy_tap.Options, ["--max-size", "huge"], "--max-size"),
    (proxy_tap.Options, ["--max-size", "0"], "--max-size"),
    (server_tap.Options, ["--capacity", "0G"], "--capacity"),
    (proxy_tap.Options, ["--rebuild=yes"], "--rebuild"),
    (proxy_tap.Options, ["--catalog", "mysql://root@localhost/depot"], "--catalog"),
    (proxy_tap.Options, ["--catalog", "postgresql://h:notaport/db"], "--catalog"),
    (server_tap.Options, ["--proxy", "nope:nope"], "--proxy"),
    (server_tap.Options, ["--proxy", "tcp:127.0.0.1:7001", "--proxy", "nope:nope"], "--proxy"),
    (server_tap.Options, ["--proxy", "tcp:10.0.0.1:7001", "--proxy", "tcp:10.0.0.1:7001"], "--proxy"),
    (server_tap.Options, ["--proxy", "tcp:127.0.0.1:99999"], "--proxy"),  # (before: retried for good)
    (server_tap.Options, ["--proxy", "tcp:host=h:port=0"], "--proxy"),
    (server_tap.Options, ["--capacity", "-1"], "--capacity"),
    (server_tap.Options, ["--zone", "has space"], "--zone"),
    (proxy_tap.Options, ["--data", "/proc/no-such-folder/x"], "--data"),
    (server_tap.Options, ["--data", "/proc/no-such-folder/x"], "--data"),
    (server_tap.Options, ["--data", "/etc/hostname"], "--data"),
])
def test_bad_options_name_themselves_first(cls, args, option):
    with pytest.raises(SystemExit) as e:
        parse(cls, args)
    assert option in str(e.value).splitlines()[0]


def test_s3_needs_its_keys(tmp_path):
    keys = tmp_path / "s3-keys"
    keys.write_text("# a key\nAKIAEXAMPLE000000001 secretsecretsecret\n")
    o = parse(proxy_tap.Options, ["--s3", "tcp:0", "--s3-keys", str(keys)])
    assert o["s3"] == "tcp:0" and o["s3-keys"].secret("AKIAEXAMPLE000000001") == "secretsecretsecret"
    assert parse(proxy_tap.Options, [])["s3"] is None
    torn = tmp_path / "torn"
    torn.write_text("AKIAEXAMPLE000000001\n")
    for args, option in ((["--s3", "tcp:0"], "--s3-keys"),
                         (["--s3", "bogus:1", "--s3-keys", str(keys)], "--s3"),
                         (["--s3", "tcp:0", "--s3-keys", str(tmp_path / "none")], "--s3-keys"),
                         (["--s3", "tcp:0", "--s3-keys", str(torn)], "--s3-keys")):
        with pytest.raises(SystemExit) as e:
            parse(proxy_tap.Options, args)
        assert option in str(e.value).splitlines()[0], args


def test_allocator_tuning_applies_on_glibc():
    import platform

    from deposito import allocator

    applied = allocator.tune_for_streams()
    assert applied or platform.libc_ver()[0] != "glibc"


@pytest.mark.parametrize("plugin,taken_option,other", [
    ("deposito-proxy", "--port", ["--cluster-port", "tcp:0:interface=127.0.0.1"]),
    ("deposito-proxy", "--cluster-port", ["--port", "tcp:0:interface=127.0.0.1"]),
    ("deposito-proxy", "--http", ["--port", "tcp:0:interface=127.0.0.1", "--cluster-port", "tcp:0:interface=127.0.0.1"]),
    ("deposito-server", "--port", ["--proxy", "tcp:127.0.0.1:1"]),
])
def test_a_port_that_cannot_be_listened_on_ends_the_process(tmp_path, plugin, taken_option, other):
    """A real twistd whose port is taken by another socket: it says so and
    exits with a status that is not 0, rather than running without it."""
    import socket
    import subprocess

    from tests.cluster import TWISTD

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    log = tmp_path / "twistd.log"
    try:
        done = subprocess.run(
            [TWISTD, "-n", "--pidfile", str(tmp_path / "p.pid"), "--logfile", str(log), plugin,
             taken_option, f"tcp:{port}:interface=127.0.0.1", "--data", str(tmp_path / "data"), *other],
            timeout=60, capture_output=True)
    finally:
        taken.close()
    assert done.returncode != 0
    assert f"({taken_option})" in log.read_text() and "Address already in use" in log.read_text()
    assert not (tmp_path / "p.pid").exists()


def proxy_on(data):
    """A real twistd proxy started on the catalog in ``data``, which is
    expected to stop at once: how it ended."""
    import subprocess
    import sys

    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    return subprocess.run([twistd, "-n", "--pidfile", str(data / "p.pid"), "--logfile", str(data / "p.log"),
                           "deposito-proxy", "--port", "tcp:0:interface=127.0.0.1",
                           "--cluster-port", "tcp:0:interface=127.0.0.1", "--data", str(data)],
                          capture_output=True, text=True, timeout=60)


def test_a_catalog_file_that_is_not_a_database_stops_the_start_saying_what_to_do(tmp_path):
    """A torn or overwritten catalog file: twistd stops at once with one line
    naming the file and the way out, not a traceback."""
    (tmp_path / "catalog.sqlite").write_bytes(b"\0" * 65536)
    run = proxy_on(tmp_path)
    assert run.returncode != 0
    said = run.stderr.strip().splitlines()
    assert len(said) == 1 and str(tmp_path / "catalog.sqlite") in said[0] and "--rebuild" in said[0], run.stderr


def test_a_catalog_of_a_newer_deposito_stops_the_start_and_is_left_as_it_was(tmp_path):
    """A catalog made or upgraded by a newer version (its schema version
    above this code's): twistd stops with one line that says so, and the
    file is not touched (an older proxy must not change what it does not know)."""
    import hashlib
    import sqlite3

    from deposito.catalog import Catalog
    from deposito.catalog.schema import SCHEMA_VERSION

    Catalog(str(tmp_path)).close()
    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = hashlib.sha256((tmp_path / "catalog.sqlite").read_bytes()).hexdigest()
    run = proxy_on(tmp_path)
    assert run.returncode != 0
    said = run.stderr.strip().splitlines()
    assert len(said) == 1 and f"schema version {SCHEMA_VERSION + 1}" in said[0] and "newer" in said[0], run.stderr
    assert not (tmp_path / "p.pid").exists()
    assert hashlib.sha256((tmp_path / "catalog.sqlite").read_bytes()).hexdigest() == before


def test_the_processes_raise_their_open_files_limit_as_far_as_they_may(tmp_path):
    """Under a soft limit of 1024 open files, idle connections on one port
    would take every port's descriptors first: a proxy or server raises its
    soft limit to its hard one (before: the proxy stopped greeting anyone at
    1024 connections in all, whatever each port's cap), and says in the log
    when that is still low. A real twistd server started under 1024/16384,
    then one under 512/1024."""
    import resource
    import signal
    import subprocess
    import time

    from tests.cluster import TWISTD, free_port

    def limits_of_a_server(soft, hard, name):
        log = tmp_path / f"{name}.log"
        p = subprocess.Popen([TWISTD, "-n", "--pidfile", str(tmp_path / f"{name}.pid"), "--logfile", str(log),
                              "deposito-server", "--proxy", f"tcp:127.0.0.1:{free_port()}", "--data",
                              str(tmp_path / name), "--port", "tcp:0:interface=127.0.0.1", "--name", name],
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
        try:
            deadline = time.monotonic() + 30
            while not (log.exists() and "serving blobs on" in log.read_text()) and time.monotonic() < deadline:
                time.sleep(0.1)
            row = [line for line in open(f"/proc/{p.pid}/limits") if line.startswith("Max open files")][0]
            return row.split()[3:5], log.read_text()
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)

    (soft, hard), _ = limits_of_a_server(1024, 16384, "roomy")
    assert (soft, hard) == ("16384", "16384")
    (soft, hard), log = limits_of_a_server(512, 1024, "tight")
    assert (soft, hard) == ("1024", "1024") and "may open only 1024 files (ulimit -n)" in log
