"""Catalogs for tests, on either database: SQLite in a temporary folder, or
a fresh database on the session's private PostgreSQL server."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Union

import pytest

from deposito.catalog import Catalog
from deposito.catalog.database import Backend

BACKENDS = ["sqlite", "postgresql"]
_databases = itertools.count()


class Postgres:
    """The session's private PostgreSQL server (examples/private_postgres.py),
    made for speed: nothing is fsynced (a test's catalog need not survive a
    power cut)."""

    def __init__(self) -> None:
        from examples.private_postgres import PACKAGE, PrivatePostgres, find_bindir
        from tests.cluster import free_port

        if find_bindir() is None:
            pytest.skip(f"PostgreSQL's server programs (initdb, pg_ctl) are not installed: {PACKAGE}")
        # a folder the postgres user can reach (pytest's own are private to this user)
        self.folder = Path(tempfile.mkdtemp(prefix="deposito-pg-"))
        self.server = PrivatePostgres(self.folder, free_port(), settings={
            "fsync": "off", "full_page_writes": "off", "max_connections": "200"})
        self.url = self.server.start()

    def database(self) -> str:
        """A new empty database: its URL."""
        import psycopg

        name = f"test{next(_databases)}"
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    def drop(self, url: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class Catalogs:
    """Fresh catalogs on one database for one test; closed (and their
    PostgreSQL databases dropped) after it."""

    def __init__(self, kind: str, tmp_path: Path, postgres: Postgres | None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.postgres = postgres
        self._made = itertools.count()
        self._open: list[Catalog] = []
        self._urls: list[str] = []

    def where(self) -> Union[str, Backend]:
        """A new, empty place for a catalog (a folder, or a database)."""
        if self.kind == "sqlite":
            return str(self.tmp_path / f"catalog{next(self._made)}")
        from deposito.catalog.postgres import PostgresBackend

        assert self.postgres is not None
        url = self.postgres.database()
        self._urls.append(url)
        return PostgresBackend(url)

    def open(self, where: Union[str, Backend]) -> Catalog:
        catalog = Catalog(where)
        self._open.append(catalog)
        return catalog

    def new(self) -> Catalog:
        return self.open(self.where())

    def fast(self, catalog: Catalog) -> Catalog:
        """``catalog``, its commits no longer flushed to disk (for tests that fill it)."""
        if self.kind == "sqlite":
            catalog.db.execute("PRAGMA synchronous=OFF")
        return catalog

    def close(self) -> None:
        for catalog in self._open:
            catalog.close()
        if self.postgres is not None:
            for url in self._urls:
                self.postgres.drop(url)
