"""One real 3-member etcd cluster for the module (data on tmpfs, removed afterwards), nodes stopped per test."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.etcd import EtcdCluster
from tests.cluster.nodes import Node

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    cluster = EtcdCluster()
    try:
        cluster.start()
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def url(etcd: EtcdCluster, request: pytest.FixtureRequest) -> str:
    """A prefix of its own per test, so tests sharing the cluster never see each other's apps."""
    etcd.start()  # a test that killed members and failed leaves them down: bring them back
    etcd.wait_healthy()
    return etcd.url(f"skiff-{request.node.name[:40]}-{next(_prefixes)}")


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(url: str, index: int, *args: Any, **kwargs: Any) -> Node:
        node = Node(url, index, tmp_path, *args, **kwargs)
        nodes.append(node)
        return node

    yield start
    for node in reversed(nodes):
        node.stop()
