from __future__ import annotations

import pytest

from tests.cluster import Cluster


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
