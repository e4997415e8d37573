"""Clustered config latency: put acknowledged by etcd → applied by every worker of every node (p50/p99).

    .venv/bin/python bench/etcd_latency.py [--changes 1000] [--nodes 3] [--apps 50]

Starts a real 3-member etcd cluster (data on tmpfs) and N skiff nodes on 127.0.0.2, .3, ... following one
prefix, then makes one change at a time: put, wait until every node's record under PREFIX/nodes/ says it applied
that revision (the record is written once every worker acknowledged the snapshot, so this is an upper bound
that includes the report's own write), next. Also prints each node's `skiff_config_apply_seconds` histogram
(watch event → applied by every worker) and the helper's and supervisor's RSS. Everything is stopped by PID and
the etcd data removed, on success or failure.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from control.sources.etcdapi import EtcdError  # noqa: E402
from proxy.cluster import parse_etcd_url  # noqa: E402
from tests.cluster.etcd import EtcdCluster  # noqa: E402
from tests.cluster.nodes import Node  # noqa: E402
from tests.support import Echo, free_ports  # noqa: E402


class Applied:
    """Follows PREFIX/nodes/ with a watch: node → applied revision, and a condition to wait on."""

    def __init__(self, etcd: EtcdCluster, prefix: str) -> None:
        self.revisions: dict[str, int] = {}
        self.changed = threading.Condition()
        self.etcd, self.prefix = etcd, prefix
        threading.Thread(target=self.follow, daemon=True).start()

    def follow(self) -> None:
        endpoint = self.etcd.client.endpoints[0]
        try:
            for _, events in endpoint.watch(self.prefix, 1):
                with self.changed:
                    for event in events:
                        if event.document is not None:
                            record = orjson.loads(event.document.value)
                            self.revisions[record["node"]] = int(record["applied_revision"])
                    self.changed.notify_all()
        except EtcdError:
            return

    def wait(self, nodes: list[str], revision: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(
                lambda: all(self.revisions.get(n, 0) >= revision for n in nodes), timeout)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--apps", type=int, default=50)
    args = parser.parse_args()
    etcd = EtcdCluster()
    echo = Echo(free_ports(1))
    nodes: list[Node] = []
    cache_dir = etcd.root / "caches"
    cache_dir.mkdir()
    try:
        etcd.start()
        etcd.wait_healthy()
        url = etcd.url("bench")
        parsed = parse_etcd_url(url)
        ports = free_ports(args.apps)
        target = f"127.0.0.1:{echo.ports[0]}"

        def put(i: int, change: int) -> int:
            document = {"Name": f"app{i}", "Ports": [ports[i]], "Targets": [target], "IdleTimeout": 10 + change}
            revision: int = etcd.client.call("put", parsed.apps_key(f"app{i}"), orjson.dumps(document))
            return revision

        for i in range(args.apps):
            put(i, 0)
        nodes = [Node(url, i, cache_dir) for i in range(args.nodes)]
        applied = Applied(etcd, parsed.nodes_key())
        names = [n.node_id for n in nodes]
        latencies: list[float] = []
        missed = 0
        for change in range(1, args.changes + 1):
            revision = put(change % args.apps, change)
            acknowledged = time.monotonic()
            if applied.wait(names, revision, 10.0):
                latencies.append(time.monotonic() - acknowledged)
            else:
                missed += 1
        print(f"{len(latencies)} changes, {args.nodes} nodes x 1 worker, 3 etcd members; {missed} not applied in 10 s")
        print(f"put acknowledged -> applied by every worker of every node: p50 {percentile(latencies, 0.5) * 1000:.0f}"
              f" ms, p90 {percentile(latencies, 0.9) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms,"
              f" max {max(latencies) * 1000:.0f} ms, mean {statistics.mean(latencies) * 1000:.0f} ms")
        for node in nodes:
            metrics = node.get("/metrics").decode()
            count = re.search(r"^skiff_config_apply_seconds_count (\S+)", metrics, re.M)
            total = re.search(r"^skiff_config_apply_seconds_sum (\S+)", metrics, re.M)
            le = dict(re.findall(r'^skiff_config_apply_seconds_bucket\{le="([^"]+)"\} (\S+)', metrics, re.M))
            helper = [p for p in node.workers() if "etcd helper" in " ".join(p.cmdline())]
            rss = {"supervisor": psutil.Process(node.proc.pid).memory_info().rss,
                   "helper": helper[0].memory_info().rss if helper else 0}
            if count and total:
                n = float(count.group(1))
                print(f"{node.node_id}: watch event -> applied: {n:.0f} snapshots, mean "
                      f"{float(total.group(1)) / max(n, 1) * 1000:.0f} ms, <=0.15 s {float(le['0.15']) / n:.0%}, "
                      f"<=0.3 s {float(le['0.3']) / n:.0%}, <=1 s {float(le['1.0']) / n:.0%}; RSS supervisor "
                      f"{rss['supervisor'] / 2**20:.1f} MiB, etcd helper {rss['helper'] / 2**20:.1f} MiB")
        return 0
    finally:
        for node in nodes:
            node.stop()
        echo.stop()
        etcd.destroy()


if __name__ == "__main__":
    sys.exit(main())
