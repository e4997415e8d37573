"""The tester's config reader: the proxy's format, tolerant of extras, precise about what it cannot use."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tester.config import (
    App,
    ConfigError,
    is_local,
    parse_config,
    read_config,
    render_config,
    split_host_port,
    write_atomically,
)

EXAMPLE = b"""{"Apps": [
  {"Name": "five-thousand", "Ports": [5001, 5200], "Targets": ["127.0.0.1:15001", "127.0.0.1:15002"]},
  {"Name": "six", "Ports": [6001],
   "Targets": ["localhost:16001", "bad.target.for.testing:6003", "[::1]:16002"]}
]}"""


def test_reads_the_proxy_format() -> None:
    apps = parse_config(EXAMPLE)
    assert apps[0] == App("five-thousand", (5001, 5200), ("127.0.0.1:15001", "127.0.0.1:15002"))
    assert apps[1].targets[2] == "[::1]:16002"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("host.example:1", ("host.example", 1)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["nocolon", "host:", ":80", "host:0", "host:70000", "::1:80", "[::1:80"])
def test_split_host_port_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        split_host_port(text)


def test_errors_name_the_place() -> None:
    with pytest.raises(ConfigError, match=r"Apps\[0\]\.Targets\[1\]: 'nocolon' is not host:port"):
        parse_config(b'{"Apps": [{"Name": "a", "Ports": [1], "Targets": ["h:1", "nocolon"]}]}')
    with pytest.raises(ConfigError, match=r"Apps\[0\]\.Ports"):
        parse_config(b'{"Apps": [{"Name": "a", "Ports": ["x"], "Targets": []}]}')
    with pytest.raises(ConfigError, match="Apps: expected a non-empty list"):
        parse_config(b'{"apps": []}')


def test_tolerates_case_and_extra_keys() -> None:
    apps = parse_config(b'{"apps": [{"name": "a", "ports": [1], "targets": ["h:1"], "Weight": 3}], "x": 1}')
    assert apps == [App("a", (1,), ("h:1",))]


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.4.5.6", True),
        ("::1", True),
        ("localhost", True),
        ("10.0.0.1", False),
        ("bad.target.for.testing", False),
        ("::2", False),
    ],
)
def test_is_local(host: str, local: bool) -> None:
    assert is_local(host) is local


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
targets = st.builds(
    lambda h, p: f"{h}:{p}", st.sampled_from(["127.0.0.1", "[::1]", "a.b"]), st.integers(1, 65535)
)
apps = st.lists(
    st.builds(
        App,
        names,
        st.lists(st.integers(1, 65535), max_size=4).map(tuple),
        st.lists(targets, max_size=4).map(tuple),
    ),
    min_size=1,
    max_size=4,
)


@given(apps)
def test_render_then_parse_round_trips(original: list[App]) -> None:
    assert parse_config(render_config(original)) == original


def test_write_atomically_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(EXAMPLE)
    inode = path.stat().st_ino
    write_atomically(path, render_config([App("n", (1,), ("h:2",))]))
    assert read_config(path) == [App("n", (1,), ("h:2",))]
    assert path.stat().st_ino != inode, "a rename, not an in-place write"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
