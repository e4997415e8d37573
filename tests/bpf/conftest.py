"""Fixtures for the BPF tests: the built object, a fresh network namespace per test, a private bpffs pin root.

Everything here is real: `make -C bpf` builds the program, `ip netns add` makes the namespace, and the pin
root is its own bpffs mount, so a test can neither see nor leave behind pins of any other test or host.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests/bpf has no __init__.py, so make `import bpf` find the package

from skiff_bpf_harness import Netns  # noqa: E402


@pytest.fixture(scope="session")
def bpf_object() -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "bpf")], check=True, timeout=60)
    return REPO / "bpf" / "skiff.bpf.o"


SYSTEM_PINS = Path("/sys/fs/bpf/skiff")


def _system_pins() -> set[str]:
    return {str(p) for p in SYSTEM_PINS.rglob("*")} if SYSTEM_PINS.is_dir() else set()


@pytest.fixture
def netns() -> Iterator[Netns]:
    name = f"skiff-test-{uuid.uuid4().hex[:8]}"
    before = _system_pins()
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)
    # Tests pin under their own bpffs; the system pin root must look exactly as it did.
    assert _system_pins() == before


@pytest.fixture
def pin_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="skiff-bpffs-"))
    subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], check=True, timeout=10)
    try:
        yield root
    finally:
        # Lazy: a test that failed mid-way may still hold a pin fd in a child that is being killed.
        subprocess.run(["umount", "-l", str(root)], check=False, timeout=10)
        root.rmdir()
