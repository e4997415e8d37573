"""The failpoint list: which points a SKIFF_FAILPOINT value switches on, and when."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from proxy.failpoints import parse

ROOT = Path(__file__).resolve().parents[2]


def test_parse_names_and_paths() -> None:
    assert parse("") == {}
    assert parse("worker-boot") == {"worker-boot": None}
    assert parse("worker-boot:/tmp/x, metrics-render ,") == {"worker-boot": "/tmp/x", "metrics-render": None}
    assert parse("a:") == {"a": None}


def test_a_path_switches_a_point_on_and_off(tmp_path: Path) -> None:
    flag = tmp_path / "on"
    code = "from proxy import failpoints; print(failpoints.active('x'), failpoints.active('y'))"
    env = {"SKIFF_FAILPOINT": f"x:{flag}", "PATH": "/usr/bin:/bin"}

    def ask() -> str:
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    assert ask() == "False False"
    flag.touch()
    assert ask() == "True False"
