"""The clustered config's pure core: URLs, documents → Config (skips, last good, port conflicts), import chunks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.cluster import (
    Document,
    EtcdUrl,
    app_put_ops,
    assemble,
    chunk_ops,
    lagging,
    parse_app_document,
    parse_etcd_url,
)
from proxy.config import App, Config, Target
from proxy.errors import ConfigError
from proxy.snapshot import digest_of

URL = parse_etcd_url("etcd://127.0.0.1:2379,[::1]:2479,etcd-2.local:2579/fleet/")


def doc(name: str, ports: list[int], revision: int, **extra: Any) -> tuple[str, Document]:
    value = orjson.dumps({"Name": name, "Ports": ports, "Targets": ["127.0.0.1:9"], **extra})
    return URL.apps_key(name), Document(value, revision)


def app(name: str, ports: list[int]) -> App:
    return App(name, tuple(ports), (Target("127.0.0.1", 9),))


def test_url_endpoints_and_prefix() -> None:
    assert URL.endpoints == (("127.0.0.1", 2379), ("::1", 2479), ("etcd-2.local", 2579))
    assert URL.prefix == "/fleet"
    assert URL.apps_key("web") == "/fleet/apps/web"
    assert URL.settings_key == "/fleet/settings"
    assert URL.nodes_key("n1") == "/fleet/nodes/n1"


@pytest.mark.parametrize(("text", "problem"), [
    ("http://127.0.0.1:2379/x", "is not etcd://"),
    ("etcd://127.0.0.1:2379", "missing /PREFIX"),
    ("etcd://127.0.0.1:2379/", "missing /PREFIX"),
    ("etcd://127.0.0.1/x", "'127.0.0.1' is not HOST:PORT"),
    ("etcd://127.0.0.1:99999/x", "is not HOST:PORT"),
    ("etcd://a:1,,b:2/x", "'' is not HOST:PORT"),
])
def test_bad_urls_are_one_line(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        parse_etcd_url(text)
    assert "\n" not in str(info.value)


def test_documents_make_a_config_sorted_by_name() -> None:
    documents = dict([doc("web", [80, 81], 5), doc("db", [5432], 7, IdleTimeout=60)])
    assembly = assemble(URL, documents, {})
    assert [a.name for a in assembly.config.apps] == ["db", "web"]
    assert assembly.config.apps[0].idle_timeout == 60
    assert assembly.skipped == {}
    # The same documents, in any order, make the same content (one digest, so no new snapshot).
    again = assemble(URL, dict(reversed(list(documents.items()))), {})
    assert digest_of(again.config) == digest_of(assembly.config)


def test_node_and_unknown_keys_are_not_apps() -> None:
    documents = dict([doc("web", [80], 5)])
    documents[URL.nodes_key("n1")] = Document(b'{"applied_revision": 5}', 6)
    documents["/fleet/other"] = Document(b"junk", 7)
    assert [a.name for a in assemble(URL, documents, {}).config.apps] == ["web"]


@pytest.mark.parametrize(("value", "reason"), [
    (b"{", "/fleet/apps/web: not valid JSON"),
    (b'{"Name": "web", "Ports": [80], "Targets": ["nocolon"]}', '/fleet/apps/web: Targets[0]: "nocolon" is not'),
    (b'{"Name": "www", "Ports": [80], "Targets": ["a:1"]}', "/fleet/apps/web: Name: 'www' must equal"),
    (b'[1]', "/fleet/apps/web: must be an object"),
])
def test_an_invalid_document_is_skipped_with_its_key_and_reason(value: bytes, reason: str) -> None:
    documents = dict([doc("db", [5432], 3)])
    documents[URL.apps_key("web")] = Document(value, 9)
    assembly = assemble(URL, documents, {})
    assert [a.name for a in assembly.config.apps] == ["db"]
    assert list(assembly.skipped) == [URL.apps_key("web")]
    assert assembly.skipped[URL.apps_key("web")].startswith(reason)
    assert "\n" not in assembly.skipped[URL.apps_key("web")]


def test_an_invalid_document_keeps_its_last_good_version_serving() -> None:
    documents = dict([doc("db", [5432], 3)])
    documents[URL.apps_key("web")] = Document(b'{"Name": "web"}', 9)
    assembly = assemble(URL, documents, {"web": app("web", [80])})
    assert assembly.config.app_by_port[80].name == "web"
    assert URL.apps_key("web") in assembly.skipped


def test_a_deleted_key_removes_the_app_even_with_a_last_good_version() -> None:
    assembly = assemble(URL, dict([doc("db", [5432], 3)]), {"web": app("web", [80])})
    assert [a.name for a in assembly.config.apps] == ["db"]


def test_of_two_documents_claiming_a_port_the_later_is_skipped() -> None:
    documents = dict([doc("old", [80], 3), doc("new", [80, 81], 8)])
    assembly = assemble(URL, documents, {})
    assert [a.name for a in assembly.config.apps] == ["old"]
    assert assembly.skipped == {URL.apps_key("new"): "/fleet/apps/new: Ports: port 80 is already used by "
                                                     "/fleet/apps/old (the later document is skipped)"}


def test_a_conflicting_change_keeps_the_apps_last_good_version() -> None:
    documents = dict([doc("a", [80], 3), doc("b", [80], 8)])
    assembly = assemble(URL, documents, {"a": app("a", [80]), "b": app("b", [90])})
    assert assembly.config.app_by_port[80].name == "a"
    assert assembly.config.app_by_port[90].name == "b"
    assert list(assembly.skipped) == [URL.apps_key("b")]


def test_settings_today_accept_only_an_empty_object() -> None:
    documents = dict([doc("web", [80], 3)])
    documents[URL.settings_key] = Document(b"{}", 4)
    assert assemble(URL, documents, {}).skipped == {}
    documents[URL.settings_key] = Document(b'{"Apps": []}', 5)
    assert "apps live under their own keys" in assemble(URL, documents, {}).skipped[URL.settings_key]
    documents[URL.settings_key] = Document(b'{"Colour": 1}', 6)
    assert "unknown field" in assemble(URL, documents, {}).skipped[URL.settings_key]


names = st.text(alphabet="abcdefgh", min_size=1, max_size=4)


@given(st.dictionaries(names, st.tuples(st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True),
                                        st.integers(1, 1000), st.booleans()), max_size=12))
def test_assembly_never_serves_a_port_twice_and_explains_every_missing_app(
        spec: dict[str, tuple[list[int], int, bool]]) -> None:
    documents = {}
    for name, (ports, revision, valid) in spec.items():
        key, document = doc(name, ports, revision)
        documents[key] = document if valid else Document(b'{"Name": 1}', revision)
    assembly = assemble(URL, documents, {})
    config = assembly.config  # Config() itself would have caught a port served twice
    assert sum(len(a.ports) for a in config.apps) == len(config.ports)
    served = {a.name for a in config.apps}
    for name in spec:
        assert (name in served) != (URL.apps_key(name) in assembly.skipped)
    for name, (ports, revision, valid) in spec.items():
        if valid and name not in served:  # skipped for a conflict: an earlier document that serves holds a port
            assert any(set(ports) & set(spec[other][0])
                       and (spec[other][1], URL.apps_key(other)) < (revision, URL.apps_key(name))
                       for other in served)


def test_a_document_must_be_one_app_named_like_its_key() -> None:
    assert parse_app_document("/k", "web", b'{"Name":"web","Ports":[1],"Targets":["a:1"]}').name == "web"
    with pytest.raises(ConfigError, match="Ports: missing"):
        parse_app_document("/k", "web", b'{"Name":"web","Targets":["a:1"]}')


@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), st.binary(max_size=5000)), max_size=400),
       st.integers(1, 200), st.integers(8000, 200_000))
def test_import_chunks_keep_order_and_limits(ops: list[tuple[str, bytes]], max_ops: int, max_bytes: int) -> None:
    chunks = chunk_ops(ops, max_ops, max_bytes)
    assert [op for chunk in chunks for op in chunk] == ops
    for chunk in chunks:
        assert 1 <= len(chunk) <= max_ops
        assert sum((len(k.encode()) + len(v) + 2) * 4 // 3 + 64 for k, v in chunk) <= max_bytes


def test_import_of_more_than_128_apps_needs_more_than_one_transaction() -> None:
    config = Config(tuple(app(f"app{i:03}", [1000 + i]) for i in range(300)))
    chunks = chunk_ops(app_put_ops(URL, config))
    assert [len(c) for c in chunks] == [128, 128, 44]
    with pytest.raises(ConfigError, match="too large for one etcd request"):
        chunk_ops([("/k", b"x" * 2_000_000)])


def test_lagging_nodes_are_below_the_newest_document() -> None:
    assert lagging({"a": 10, "b": 7, "c": 12}, 9) == {"b"}
    assert lagging({}, 9) == set()


def test_url_round_trips() -> None:
    assert str(parse_etcd_url(str(URL))) == str(URL)
    assert isinstance(URL, EtcdUrl)
