"""Config validation: the seed's form loads unchanged; every mistake gets one line naming its path."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import App, Config, Target, parse_config, parse_document
from proxy.errors import ConfigError
from tests.proxy.bad_configs import BAD_CONFIGS

SEED = b"""{"Apps": [
  {"Name": "five-thousand", "Ports": [5001, 5200], "Targets": ["tcp-echo.fly.dev:5001", "tcp-echo.fly.dev:5002"]},
  {"Name": "six-thousand", "Ports": [6001, 6200],
   "Targets": ["tcp-echo.fly.dev:6001", "tcp-echo.fly.dev:6002", "bad.target.for.testing:6003"]},
  {"Name": "seven-thousand", "Ports": [7001, 7200], "Targets": ["tcp-echo.fly.dev:7001", "tcp-echo.fly.dev:7002"]}
]}"""


def test_seed_config_loads_unchanged() -> None:
    config = parse_config(SEED)
    assert [a.name for a in config.apps] == ["five-thousand", "six-thousand", "seven-thousand"]
    assert config.app_by_port[6200].name == "six-thousand"
    assert config.apps[1].targets[2] == Target("bad.target.for.testing", 6003)
    assert config.summary() == "3 apps, 6 ports, 7 targets"


def test_shipped_config_is_valid() -> None:
    from pathlib import Path

    config = parse_config((Path(__file__).resolve().parents[2] / "config.json").read_bytes())
    assert sorted(config.ports) == [5001, 5200, 6001, 6200, 7001, 7200]
    assert "bad.target.for.testing:6003" in [str(t) for t in config.apps[1].targets]


def test_target_forms() -> None:
    config = parse_config(b'{"Apps": [{"Name": "a", "Ports": [1], "Targets": '
                          b'["example.com:80", "10.0.0.1:81", "[::1]:82", "under_score.local:83"]}]}')
    assert [str(t) for t in config.apps[0].targets] == ["example.com:80", "10.0.0.1:81", "[::1]:82",
                                                        "under_score.local:83"]


def test_optional_fields() -> None:
    config = parse_config(b'{"Apps": [{"Name": "a", "Ports": [1], "Targets": ["a:1"], '
                          b'"ConnectTimeout": 0.5, "IdleTimeout": 60}]}')
    assert config.apps[0].connect_timeout == 0.5
    assert config.apps[0].idle_timeout == 60.0


@pytest.mark.parametrize(("data", "expected"), BAD_CONFIGS, ids=[f"bad{i}" for i in range(len(BAD_CONFIGS))])
def test_bad_config_gets_one_line(data: bytes, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_at_least_thirty_bad_configs() -> None:
    assert len(BAD_CONFIGS) >= 30


names = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9]{0,5}){0,2}", fullmatch=True)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    app_names = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    ports = draw(st.lists(st.integers(1, 65535), min_size=len(app_names) * 3, max_size=len(app_names) * 3,
                          unique=True))
    apps = []
    for i, name in enumerate(app_names):
        targets = draw(st.lists(st.builds(Target, hosts, st.integers(1, 65535)), min_size=1, max_size=4,
                                unique=True))
        apps.append(App(name, tuple(ports[i * 3:i * 3 + draw(st.integers(1, 3))]), tuple(targets)))
    return Config(tuple(apps))


@given(configs())
def test_document_round_trip(config: Config) -> None:
    assert parse_document(orjson.loads(orjson.dumps(config.to_document()))) == config
