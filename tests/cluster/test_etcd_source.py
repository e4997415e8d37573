"""Nodes fed from one real 3-member etcd cluster: changes reach every node, outages never stop the data plane.

Every scenario runs real `supervisor.py -c etcd://...` nodes side by side on 127.0.0.2, .3, ... (same app
ports), a real etcd cluster on loopback, real echo targets, and clients dialling each node.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.cluster import parse_etcd_url
from tests.cluster.etcd import EtcdCluster
from tests.cluster.nodes import Node, expected_digest, skiffctl
from tests.support import PYTHON, ROOT, Echo, can_connect, echo_roundtrip, free_ports, wait_for

CONVERGE = 30.0  # a generous bound on a loaded 2-core machine; latency is a bench figure, not a test


def metrics_show(node: Node, line: bytes) -> None:
    """/metrics is rendered at most once a second (the cache): wait for a render that shows `line`."""
    wait_for(lambda: line in node.get("/metrics"), 5, f"/metrics to show {line!r}")


def put_app(etcd: EtcdCluster, url: str, name: str, ports: list[int], targets: list[str], **extra: Any) -> int:
    key = parse_etcd_url(url).apps_key(name)
    revision: int = etcd.client.call("put", key, orjson.dumps({"Name": name, "Ports": ports, "Targets": targets,
                                                               **extra}))
    return revision


def delete_app(etcd: EtcdCluster, url: str, name: str) -> int:
    revision, _ = etcd.client.call("delete", parse_etcd_url(url).apps_key(name))
    return int(revision)


def converge(etcd: EtcdCluster, url: str, nodes: list[Node], revision: int) -> None:
    digest = expected_digest(etcd, url)
    for node in nodes:
        wait_for(lambda n=node: n.serves(digest, revision), CONVERGE,  # type: ignore[misc]
                 f"{node.node_id} to serve etcd's state at revision {revision}: {node.state().get('config_source')}")


@pytest.fixture
def echo() -> Any:
    target = Echo(free_ports(1))
    yield target
    target.stop()


def test_import_then_put_change_delete_reach_every_node(etcd: EtcdCluster, url: str, echo: Echo,
                                                        start_node: Callable[..., Node], tmp_path: Path) -> None:
    """1. skiffctl imports a config file of 150 apps (more than etcd's 128 operations per transaction).
    2. Three nodes start on 127.0.0.2-4; each serves every app (clients dial each node).
    3. 200 changes (target and port changes, new apps, deletions) in quick succession: every node ends on
       etcd's exact state; a deleted app's port refuses on every node, a moved app answers on its new port.
    4. skiffctl nodes lists the three nodes at the final revision, none lagging; a stopped (SIGSTOP) node is
       marked lagging after a change; a node that exits takes its record with it."""
    target = f"127.0.0.1:{echo.ports[0]}"
    ports = free_ports(160)
    apps = [{"Name": f"app{i:03}", "Ports": [ports[i]], "Targets": [target]} for i in range(150)]
    (tmp_path / "config.json").write_bytes(orjson.dumps({"Apps": apps}))
    code, out, err = skiffctl(url, "import", str(tmp_path / "config.json"))
    assert code == 0, err
    assert "imported 150 apps in 2 transactions" in out
    nodes = [start_node(url, i) for i in range(3)]
    revision = int(out.rsplit(" ", 1)[1])
    converge(etcd, url, nodes, revision)
    for node in nodes:
        for port in (ports[0], ports[149]):
            assert echo_roundtrip(port, b"hello", host=node.address) == b"hello"

    rng = random.Random(16)
    spare = ports[150:]
    live = {a["Name"]: a["Ports"][0] for a in apps}
    for change in range(200):
        name = rng.choice(sorted(live))
        roll = rng.random()
        if roll < 0.1 and spare:
            new = f"new{change}"
            live[new] = spare.pop()
            revision = put_app(etcd, url, new, [live[new]], [target])
        elif roll < 0.2 and len(live) > 100:
            spare.append(live.pop(name))
            revision = delete_app(etcd, url, name)
        elif roll < 0.3 and spare:
            spare.append(live[name])
            live[name] = spare.pop(0)
            revision = put_app(etcd, url, name, [live[name]], [target])
        else:
            revision = put_app(etcd, url, name, [live[name]], [target], IdleTimeout=1 + change)
    converge(etcd, url, nodes, revision)
    served_ports = set(live.values())
    gone = [p for p in ports if p not in served_ports][:3]
    for node in nodes:
        for name in sorted(live)[:3]:
            assert echo_roundtrip(live[name], b"x", host=node.address) == b"x"
        for port in gone:
            assert not can_connect(port, node.address)

    for node in nodes:
        metrics_show(node, f"skiff_config_source_revision {node.state()['config_source']['revision']:.1f}".encode())
        metrics = node.get("/metrics").decode()
        applied = re.search(r"^skiff_config_apply_seconds_count (\S+)", metrics, re.M)
        assert applied is not None and float(applied.group(1)) >= 1  # coalesced: fewer snapshots than changes

    code, out, err = skiffctl(url, "nodes")
    assert code == 0, err
    assert "3 nodes; 0 lagging" in out, out
    nodes[1].pause()  # its record (under a 10 s lease) stays at the old revision for a while
    try:
        revision = put_app(etcd, url, sorted(live)[0], [live[sorted(live)[0]]], [target], IdleTimeout=7)
        converge(etcd, url, [nodes[0]], revision)
        code, out, err = skiffctl(url, "nodes")
    finally:
        nodes[1].resume()
    assert re.search(r"^node1 .*<- LAGGING$", out, re.M) and "3 nodes; 1 lagging" in out, out
    converge(etcd, url, nodes, revision)
    nodes[2].stop()
    code, out, _ = skiffctl(url, "nodes")
    assert "2 nodes; 0 lagging" in out and "node2" not in out, out


def test_one_member_down_changes_nothing_all_down_keeps_serving(etcd: EtcdCluster, url: str, echo: Echo,
                                                                start_node: Callable[..., Node]) -> None:
    """1. Two nodes serve app a. 2. The etcd member each node talks to first is killed: a change still reaches
    both nodes (they move to the next endpoint). 3. All members are killed: both nodes keep serving every app,
    report the source down (/status and skiff_config_source_up 0), one log line per state change.
    4. etcd comes back: a change made then reaches both nodes, and the source is up again."""
    target = f"127.0.0.1:{echo.ports[0]}"
    pa, pb, pc = free_ports(3)
    revision = put_app(etcd, url, "a", [pa], [target])
    nodes = [start_node(url, i) for i in range(2)]
    converge(etcd, url, nodes, revision)

    etcd.kill(0)
    revision = put_app(etcd, url, "b", [pb], [target])
    converge(etcd, url, nodes, revision)
    for node in nodes:
        assert echo_roundtrip(pb, b"b", host=node.address) == b"b"

    etcd.kill()
    for node in nodes:
        wait_for(lambda n=node: n.state().get("config_source", {}).get("up") is False, CONVERGE,  # type: ignore[misc]
                 f"{node.node_id} to notice etcd is down")
        metrics_show(node, b"skiff_config_source_up 0.0")
        for port in (pa, pb):
            assert echo_roundtrip(port, b"still", host=node.address) == b"still"
        assert node.log.count("etcd unreachable") == 1, node.log

    etcd.start()
    etcd.wait_healthy()
    revision = put_app(etcd, url, "c", [pc], [target])
    converge(etcd, url, nodes, revision)
    for node in nodes:
        assert echo_roundtrip(pc, b"c", host=node.address) == b"c"
        assert node.state()["config_source"]["up"] is True
        metrics_show(node, b"skiff_config_source_up 1.0")


def test_compaction_while_a_node_is_stopped_relists(etcd: EtcdCluster, url: str, echo: Echo,
                                                    start_node: Callable[..., Node]) -> None:
    """1. A node follows one member only. 2. It is stopped (SIGSTOP: supervisor, worker, helper) and its member
    is killed, so no event can reach even its socket buffers. 3. Apps are added, changed and deleted through
    the other members; etcd compacts past them; the member comes back. 4. SIGCONT: the node's watch finds its
    history compacted, it re-lists and ends with exactly etcd's state."""
    target = f"127.0.0.1:{echo.ports[0]}"
    ports = free_ports(6)
    for i in range(3):
        revision = put_app(etcd, url, f"app{i}", [ports[i]], [target])
    member = 2
    node = start_node(etcd.url(parse_etcd_url(url).prefix, [member]), 0)
    converge(etcd, url, [node], revision)

    node.pause()
    try:
        etcd.kill(member)
        delete_app(etcd, url, "app0")
        put_app(etcd, url, "app1", [ports[3]], [target])
        revision = put_app(etcd, url, "app4", [ports[4]], [target])
        etcd.client.call("compact", revision)
        etcd.start(member)
        etcd.wait_member(member, revision)
    finally:
        node.resume()
    node.wait_log(r"was compacted; re-listing", timeout=CONVERGE)
    converge(etcd, url, [node], revision)
    assert not can_connect(ports[0], node.address)
    assert not can_connect(ports[1], node.address)
    assert echo_roundtrip(ports[3], b"moved", host=node.address) == b"moved"
    assert echo_roundtrip(ports[4], b"new", host=node.address) == b"new"


def test_a_node_restarted_while_etcd_is_down_serves_from_its_cache(etcd: EtcdCluster, url: str, echo: Echo,
                                                                   start_node: Callable[..., Node]) -> None:
    """1. A node serves two apps (and caches them). 2. It stops; every etcd member is killed. 3. It starts
    again: it serves both apps from its cache. 4. etcd returns: the node catches up with a change."""
    target = f"127.0.0.1:{echo.ports[0]}"
    pa, pb, pc = free_ports(3)
    put_app(etcd, url, "a", [pa], [target])
    revision = put_app(etcd, url, "b", [pb], [target])
    node = start_node(url, 0)
    converge(etcd, url, [node], revision)
    wait_for(lambda: node.cache.exists(), CONVERGE, "the cache file")
    node.stop()

    etcd.kill()
    again = start_node(url, 0)
    assert "config from the cache" in again.log
    for port in (pa, pb):
        assert echo_roundtrip(port, b"cached", host=again.address) == b"cached"

    etcd.start()
    etcd.wait_healthy()
    revision = put_app(etcd, url, "c", [pc], [target])
    converge(etcd, url, [again], revision)
    assert echo_roundtrip(pc, b"c", host=again.address) == b"c"


def test_an_invalid_document_is_skipped_and_others_still_arrive(etcd: EtcdCluster, url: str, echo: Echo,
                                                                start_node: Callable[..., Node],
                                                                tmp_path: Path) -> None:
    """1. A node serves apps a and b. 2. a's document becomes invalid: it is skipped, logged once with its key
    and reason, reported in /status and metrics, and a's last good version keeps serving. 3. A change to b
    (and a new app c) still arrives. 4. skiffctl refuses an invalid document with --check's one-line error,
    and `--check` on the prefix names the invalid key. 5. a's document is fixed: it is served again."""
    target = f"127.0.0.1:{echo.ports[0]}"
    pa, pb, pb2, pc = free_ports(4)
    put_app(etcd, url, "a", [pa], [target])
    revision = put_app(etcd, url, "b", [pb], [target])
    node = start_node(url, 0)
    converge(etcd, url, [node], revision)

    key = parse_etcd_url(url).apps_key("a")
    etcd.client.call("put", key, b'{"Name": "a", "Ports": [70000], "Targets": ["x:1"]}')
    put_app(etcd, url, "b", [pb2], [target])
    revision = put_app(etcd, url, "c", [pc], [target])
    wait_for(lambda: node.state().get("config_source", {}).get("revision", 0) >= revision, CONVERGE,
             "the node to apply the changes after the invalid document")
    assert echo_roundtrip(pa, b"last good", host=node.address) == b"last good"
    assert echo_roundtrip(pb2, b"b moved", host=node.address) == b"b moved"
    assert echo_roundtrip(pc, b"c", host=node.address) == b"c"
    assert not can_connect(pb, node.address)
    skipped = node.state()["config_source"]["skipped"]
    assert skipped == {key: f"{key}: Ports[0]: 70000 is outside 1-65535"}
    metrics_show(node, b"skiff_config_documents_skipped 1.0")
    assert node.log.count(f"{key}: Ports[0]: 70000 is outside 1-65535") == 1

    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"Name": "d", "Ports": [80], "Targets": ["nocolon"]}')
    code, _, err = skiffctl(url, "apps", "put", str(bad))
    assert code == 1
    assert err == f'{bad}: invalid: Targets[0]: "nocolon" is not host:port\n'
    done = subprocess.run([PYTHON, str(ROOT / "supervisor.py"), "-c", url, "--check"], capture_output=True,
                          timeout=30)
    assert done.returncode == 1
    assert f"{key}: Ports[0]: 70000 is outside 1-65535" in done.stderr.decode()

    revision = put_app(etcd, url, "a", [pa], [target], IdleTimeout=5)
    converge(etcd, url, [node], revision)
    assert node.state()["config_source"]["skipped"] == {}


def test_skiffctl_apps_and_sighup(etcd: EtcdCluster, url: str, echo: Echo, start_node: Callable[..., Node],
                                  tmp_path: Path) -> None:
    """1. skiffctl apps put / get / list / delete round-trip one app. 2. A node serves it; SIGHUP re-lists
    (config unchanged, still the same version). 3. The delete reaches the node."""
    (port,) = free_ports(1)
    document = {"Name": "web", "Ports": [port], "Targets": [f"127.0.0.1:{echo.ports[0]}"], "ConnectTimeout": 1.5}
    (tmp_path / "web.json").write_bytes(orjson.dumps(document))
    code, out, err = skiffctl(url, "apps", "put", str(tmp_path / "web.json"))
    assert code == 0, err
    code, out, _ = skiffctl(url, "apps", "get", "web")
    assert orjson.loads(out) == document
    code, out, _ = skiffctl(url, "apps", "list")
    assert code == 0 and "web" in out and "1 apps at revision" in out
    node = start_node(url, 0)
    assert echo_roundtrip(port, b"w", host=node.address) == b"w"
    version = node.state()["version"]
    node.signal(signal.SIGHUP)
    node.wait_log(r"SIGHUP: config unchanged")
    node.wait_log(r"SIGHUP: re-listed /skiff-.* at revision \d+ \(\d+ keys\)")
    assert node.state()["version"] == version
    code, out, err = skiffctl(url, "apps", "delete", "web")
    assert code == 0, err
    wait_for(lambda: not can_connect(port, node.address), CONVERGE, "the deleted app's port to close")
    code, _, err = skiffctl(url, "apps", "get", "web")
    assert code == 1 and "no such app" in err


def test_a_killed_helper_is_replaced_and_changes_keep_arriving(etcd: EtcdCluster, url: str, echo: Echo,
                                                               start_node: Callable[..., Node]) -> None:
    """1. A node serves app a. 2. Its etcd helper is killed (SIGKILL): the node keeps serving and starts a
    new helper. 3. A change made afterwards arrives."""
    target = f"127.0.0.1:{echo.ports[0]}"
    pa, pb = free_ports(2)
    revision = put_app(etcd, url, "a", [pa], [target])
    node = start_node(url, 0)
    converge(etcd, url, [node], revision)
    (helper,) = [p for p in node.workers() if "etcd helper" in " ".join(p.cmdline())]
    helper.kill()
    node.wait_log(r"the etcd helper exited; serving the last good config")
    assert echo_roundtrip(pa, b"a", host=node.address) == b"a"
    revision = put_app(etcd, url, "b", [pb], [target])
    converge(etcd, url, [node], revision)
    assert echo_roundtrip(pb, b"b", host=node.address) == b"b"


def test_a_new_etcd_cluster_is_re_listed_from_its_lower_revision(tmp_path: Path, echo: Echo,
                                                                  start_node: Callable[..., Node]) -> None:
    """1. A node starts on an empty prefix of a 1-member cluster, then serves app a (put after it started) and
    many more revisions. 2. That cluster is destroyed and a new one (new cluster ID, revisions from 1) takes
    its address, holding only app b. 3. The node re-lists, serves b and not a, and reports the new cluster's
    (lower) revision: a new cluster never freezes a node, and skiff's own version kept counting up."""
    target = f"127.0.0.1:{echo.ports[0]}"
    pa, pb = free_ports(2)
    first = EtcdCluster(members=1)
    second: EtcdCluster | None = None
    try:
        first.start()
        first.wait_healthy()
        url = first.url("fleet")
        node = start_node(url, 0)
        for i in range(30):
            revision = put_app(first, url, "a", [pa], [target], IdleTimeout=1 + i)
        converge(first, url, [node], revision)
        old = node.state()
        first.destroy()
        second = EtcdCluster(members=1, client_ports=first.client_ports)
        second.start()
        second.wait_healthy()
        revision = put_app(second, url, "b", [pb], [target])
        assert revision < old["config_source"]["revision"]
        node.wait_log(r"the cluster ID changed .*; re-listing", timeout=CONVERGE)
        wait_for(lambda: node.state().get("config_source", {}).get("cluster_id") != old["config_source"]["cluster_id"],
                 CONVERGE, "the node to follow the new cluster")
        converge(second, url, [node], revision)
        state = node.state()
        assert state["config_source"]["revision"] < old["config_source"]["revision"]
        assert state["version"] > old["version"]
        assert echo_roundtrip(pb, b"b", host=node.address) == b"b"
        assert not can_connect(pa, node.address)
    finally:
        first.destroy()
        if second is not None:
            second.destroy()
