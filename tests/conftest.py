from __future__ import annotations

import pytest

from tests.catalogs import BACKENDS, Catalogs, Postgres
from tests.cluster import Cluster


@pytest.fixture(scope="session")
def postgres():
    """One private PostgreSQL server for the whole session (each test takes
    a fresh database on it); the tests that need it are skipped, saying so,
    where PostgreSQL's server programs are not installed."""
    server = Postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def catalogs(request, tmp_path):
    """Fresh catalogs on each database in turn (see tests.catalogs.Catalogs)."""
    postgres = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    made = Catalogs(request.param, tmp_path, postgres)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def cluster(tmp_path):
    """A fresh proxy and three storage servers, stopped after the test."""
    c = Cluster(tmp_path).start(3)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """One cluster for a module's tests that do not kill anything."""
    c = Cluster(tmp_path_factory.mktemp("cluster")).start(3)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(autouse=True)
def reactor_left_clean():
    """Fail a test that leaves timers or open sockets on the global reactor."""
    from twisted.internet import reactor

    calls = set(reactor.getDelayedCalls())
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    yield
    left = [c for c in reactor.getDelayedCalls() if c not in calls and c.active()]
    opened = [s for s in set(reactor.getReaders()) | set(reactor.getWriters())
              if s not in selectables and type(s).__name__ not in ("_UnixWaker", "_SocketWaker", "_SIGCHLDWaker")]
    for c in left:
        c.cancel()
    assert not left, f"the test left timers behind: {left}"
    assert not opened, f"the test left sockets open: {opened}"
