"""Fixtures that start real processes and always stop them, even when a test fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Echo, Skiff, write_config


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for thing in reversed(started):
        thing.stop()


@pytest.fixture
def start_echo(processes: list[Any]) -> Callable[[list[int]], Echo]:
    def start(ports: list[int]) -> Echo:
        echo = Echo(ports)
        processes.append(echo)
        return echo

    return start


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "config.json"


@pytest.fixture
def start_skiff(processes: list[Any], config_path: Path) -> Callable[..., Skiff]:
    def start(apps: list[dict[str, Any]] | None, *args: str, **kwargs: Any) -> Skiff:
        if apps is not None:
            write_config(config_path, apps)
        skiff = Skiff(config_path, *args, **kwargs)
        processes.append(skiff)
        return skiff

    return start
