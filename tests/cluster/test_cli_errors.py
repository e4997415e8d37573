"""`-c etcd://...` and skiffctl when something is wrong: one clear line and an exit code, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cluster.nodes import skiffctl
from tests.support import PYTHON, ROOT, free_ports


def supervisor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, str(ROOT / "supervisor.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_a_bad_etcd_url_is_one_line() -> None:
    done = supervisor("-c", "etcd://127.0.0.1/skiff", "--check")
    assert done.returncode == 1
    assert done.stderr == "'etcd://127.0.0.1/skiff': '127.0.0.1' is not HOST:PORT\n"


def test_unreachable_etcd_without_a_cache_is_one_line(tmp_path: Path) -> None:
    """Nothing listens on the port: --check and a start both fail with one line naming the URL."""
    (port,) = free_ports(1)
    done = supervisor("-c", f"etcd://127.0.0.1:{port}/skiff", "--check")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"etcd://127.0.0.1:{port}/skiff: no etcd endpoint answered")
    cache = tmp_path / "missing.json"
    done = supervisor("-c", f"etcd://127.0.0.1:{port}/skiff", "--config-cache", str(cache), "-w", "1",
                      "--bind", "127.0.0.2")
    assert done.returncode == 1
    assert f"and no cache at {cache}" in done.stderr and "Traceback" not in done.stderr


def test_skiffctl_unreachable_and_invalid_imports(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    url = f"etcd://127.0.0.1:{port}/skiff"
    code, _, err = skiffctl(url, "apps", "list")
    assert code == 2 and err.startswith(f"{url}: no etcd endpoint answered") and err.count("\n") == 1
    bad = tmp_path / "config.json"
    bad.write_bytes(b'{"Apps": [{"Name": "a", "Ports": [1], "Targets": ["x:1"]}, {"Name": "a", "Ports": [2], '
                    b'"Targets": ["x:1"]}]}')
    code, _, err = skiffctl(url, "import", str(bad))  # validated before etcd is even dialled
    assert code == 1
    assert err == f'{bad}: invalid: Apps[1].Name: "a" is already the name of Apps[0]\n'
    code, _, err = skiffctl("etcd://nowhere", "nodes")
    assert code == 1 and err == "--etcd: 'etcd://nowhere': missing /PREFIX after the endpoints\n"
