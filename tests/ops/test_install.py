"""`make install` into a staging DESTDIR: the tree, a venv that runs skiff, the BPF object, the config (never
overwritten), the unit and the sysctl file; `systemd-analyze verify` accepts the staged unit; `make
uninstall` removes what install put there. The host is not touched: no user, no systemctl, no sysctl."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import ROOT

PREFIX = "/opt/skiff"


def make(target: str, destdir: Path) -> subprocess.CompletedProcess[str]:
    venv = Path(sys.executable).parent.parent
    return subprocess.run(
        ["make", "-s", "--no-print-directory", target, f"DESTDIR={destdir}", f"PREFIX={PREFIX}",
         f"PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SKIFF_VENV_FROM": str(venv)})


def test_install_to_destdir_verify_and_uninstall(tmp_path: Path) -> None:
    """1. make install DESTDIR=stage (the venv reuses this venv's packages: SKIFF_VENV_FROM). 2. The staged
    skiff validates the shipped config with its own venv; the BPF object, config (0640), unit and sysctl file
    are there; no user was created. 3. An edited config survives a second install. 4. systemd-analyze verify
    accepts the staged unit (its PREFIX pointed at the staged tree; skipped without systemd-analyze).
    5. make uninstall removes the tree, the unit and the sysctl file and keeps the config."""
    stage = tmp_path / "stage"
    users_before = Path("/etc/passwd").read_bytes()
    started = time.monotonic()
    done = make("install", stage)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"make install into DESTDIR took {took:.1f} s")
    root = stage / PREFIX.lstrip("/")
    python = root / ".venv" / "bin" / "python"
    check = subprocess.run([str(python), str(root / "supervisor.py"), "--check", "-c",
                            str(stage / "etc/skiff/config.json")], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and ": ok: " in check.stdout, check.stdout + check.stderr
    assert (root / "bpf" / "skiff.bpf.o").is_file()
    assert not (root / ".venv" / ".deps-stamp").exists(), "the developer's venv was not copied"
    config = stage / "etc/skiff/config.json"
    assert config.stat().st_mode & 0o777 == 0o640
    unit = (stage / "etc/systemd/system/skiff.service").read_text()
    assert f"ExecStart={PREFIX}/.venv/bin/python {PREFIX}/supervisor.py -c /etc/skiff/config.json" in unit
    assert "--fd-store" in unit and "FileDescriptorStoreMax=" in unit and "KillMode=mixed" in unit
    assert (stage / "etc/sysctl.d/99-skiff.conf").read_text().count("net.ipv4.tcp_migrate_req = 1") == 1
    assert Path("/etc/passwd").read_bytes() == users_before, "no user created on the host"

    config.write_text('{"Apps": []}\n')
    assert make("install", stage).returncode == 0
    assert config.read_text() == '{"Apps": []}\n', "an existing config is never overwritten"

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the staged unit was not verified")
    # verify checks that every Exec*= command exists: point the staged unit at the staged tree (the only
    # change), as it will point at PREFIX once the package is unpacked there.
    staged_unit = tmp_path / "verify" / "skiff.service"
    staged_unit.parent.mkdir()
    staged_unit.write_text(unit.replace(PREFIX, str(root)))
    verify = subprocess.run([analyze, "verify", str(staged_unit)], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    done = make("uninstall", stage)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not root.exists()
    assert not (stage / "etc/systemd/system/skiff.service").exists()
    assert not (stage / "etc/sysctl.d/99-skiff.conf").exists()
    assert config.exists(), "uninstall keeps the operator's config"
