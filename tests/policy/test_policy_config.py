"""Traffic-policy fields: each parses, round-trips, and every mistake is one line naming its path."""

from __future__ import annotations

import orjson
import pytest

from proxy.config import HealthCheck, parse_config, parse_document
from proxy.errors import ConfigError
from proxy.snapshot import Snapshot, first_snapshot

BASE = {"Name": "a", "Ports": [5001], "Targets": ["127.0.0.1:6001", "127.0.0.1:6002"]}


def one(**fields: object) -> bytes:
    return orjson.dumps({"Apps": [{**BASE, **fields}]})


def test_every_policy_field_parses_and_round_trips() -> None:
    config = parse_config(one(SoftLimit=5, HardLimit=20, MaxConns=8, HalfCloseTimeout=2.5, ProxyProtocol="v2",
                              RetryOnReset=True, HealthCheck={"Interval": 1, "Timeout": 0.5, "Rise": 2, "Fall": 3}))
    app = config.apps[0]
    assert (app.soft_limit, app.hard_limit, app.max_conns, app.half_close_timeout) == (5, 20, 8, 2.5)
    assert app.proxy_protocol == "v2"
    assert app.retry_on_reset is True
    assert app.health_check == HealthCheck(interval=1.0, timeout=0.5, rise=2, fall=3)
    assert parse_document(config.to_document()) == config
    snapshot = first_snapshot(config)
    assert Snapshot.from_wire(snapshot.to_wire()) == snapshot


def test_defaults_leave_the_plain_form_unchanged() -> None:
    app = parse_config(one()).apps[0]
    assert (app.soft_limit, app.hard_limit, app.max_conns, app.health_check, app.proxy_protocol,
            app.half_close_timeout) == (None,) * 6
    assert app.retry_on_reset is False
    assert app.to_document() == BASE


def test_health_check_fields_have_defaults() -> None:
    assert parse_config(one(HealthCheck={})).apps[0].health_check == HealthCheck()


BAD_POLICY = [
    (one(SoftLimit=0), "Apps[0].SoftLimit: 0 is outside 1-10000000"),
    (one(HardLimit=1.5), "Apps[0].HardLimit: 1.5 is not a number of connections (a whole number)"),
    (one(MaxConns=True), "Apps[0].MaxConns: true is not a number of connections (a whole number)"),
    (one(SoftLimit=10, MaxConns=5), "Apps[0].SoftLimit: 10 is above MaxConns (5)"),
    (one(ProxyProtocol="v3"), 'Apps[0].ProxyProtocol: "v3" is not "v1" or "v2"'),
    (one(ProxyProtocol=2), 'Apps[0].ProxyProtocol: 2 is not "v1" or "v2"'),
    (one(HalfCloseTimeout=-1), "Apps[0].HalfCloseTimeout: -1 is outside 0.001-604800 seconds"),
    (one(RetryOnReset=1), "Apps[0].RetryOnReset: 1 is not true or false"),
    (one(RetryOnReset="yes"), 'Apps[0].RetryOnReset: "yes" is not true or false'),
    (one(HealthCheck=1), "Apps[0].HealthCheck: must be an object with Interval, Timeout, Rise, Fall, not a number"),
    (one(HealthCheck={"Every": 1}), "Apps[0].HealthCheck.Every: unknown field (known: Interval, Timeout, Rise, Fall)"),
    (one(HealthCheck={"Interval": 0}), "Apps[0].HealthCheck.Interval: 0 is outside 0.05-3600 seconds"),
    (one(HealthCheck={"Rise": 0}), "Apps[0].HealthCheck.Rise: 0 is outside 1-100"),
    (one(HealthCheck={"Fall": "3"}), 'Apps[0].HealthCheck.Fall: "3" is not a whole number'),
    (one(HealthCheck={"Interval": 1, "Timeout": 2}), "Apps[0].HealthCheck.Timeout: 2 is longer than Interval (1)"),
]


@pytest.mark.parametrize(("data", "message"), BAD_POLICY, ids=[m.split(":")[0] + str(i) for i, (_, m) in
                                                               enumerate(BAD_POLICY)])
def test_bad_policy_fields_are_one_line(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value) == message


def test_retry_on_reset_changes_the_digest() -> None:
    """A field the workers never see would read as "unchanged": the opt-in must reach the document and hash."""
    plain, opted = first_snapshot(parse_config(one())), first_snapshot(parse_config(one(RetryOnReset=True)))
    assert plain.digest != opted.digest
    assert Snapshot.from_wire(opted.to_wire()).config.apps[0].retry_on_reset is True
    assert parse_config(one(RetryOnReset=False)).apps[0].to_document() == BASE
