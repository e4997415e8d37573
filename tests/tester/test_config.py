"""The tester's config reader: skiff's own validation, and edits that keep every field of the operator's file."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tester.config import (
    App,
    ConfigError,
    edit_document,
    is_local,
    parse_config,
    read_config,
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


def test_errors_are_skiffs_own() -> None:
    """The tester refuses what skiff refuses, with skiff's message (one source of truth: proxy/config.py)."""
    with pytest.raises(ConfigError, match=r'Apps\[0\]\.Targets\[1\]: "nocolon" is not host:port'):
        parse_config(b'{"Apps": [{"Name": "a", "Ports": [1], "Targets": ["h:1", "nocolon"]}]}')
    with pytest.raises(ConfigError, match=r"Apps\[0\]\.Ports\[0\]"):
        parse_config(b'{"Apps": [{"Name": "a", "Ports": ["x"], "Targets": ["h:1"]}]}')
    with pytest.raises(ConfigError, match=r"port 1 is already used by Apps\[0\]"):
        parse_config(b'{"Apps": [{"Name": "a", "Ports": [1], "Targets": ["h:1"]},'
                     b' {"Name": "b", "Ports": [1], "Targets": ["h:2"]}]}')
    with pytest.raises(ConfigError, match="apps"):
        parse_config(b'{"apps": [{"name": "a", "ports": [1], "targets": ["h:1"]}]}')


def test_edit_keeps_every_other_field() -> None:
    """Only Ports and Targets of the named apps change; limits, checks, PROXY settings, other apps stay."""
    data = (b'{"Apps": [{"Name": "a", "Ports": [1], "Targets": ["h:1"], "HardLimit": 7, "ProxyProtocol": "v2",'
            b' "HealthCheck": {"Interval": 2}}, {"Name": "b", "Ports": [2], "Targets": ["h:2"], "SoftLimit": 3}]}')
    edited = orjson.loads(edit_document(data, [App("a", (1, 5), ("h:1", "h:9"))]))
    original = orjson.loads(data)
    original["Apps"][0].update({"Ports": [1, 5], "Targets": ["h:1", "h:9"]})
    assert edited == original


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


def test_write_atomically_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(EXAMPLE)
    inode = path.stat().st_ino
    path.chmod(0o644)
    write_atomically(path, b'{"Apps": [{"Name": "n", "Ports": [1], "Targets": ["h:2"]}]}')
    assert read_config(path) == [App("n", (1,), ("h:2",))]
    assert path.stat().st_ino != inode, "a rename, not an in-place write"
    assert path.stat().st_mode & 0o777 == 0o644, "the mode of the file it replaces"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
