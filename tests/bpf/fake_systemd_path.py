"""tests/bpf has no __init__.py: make tests/fake_systemd.py importable from here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fake_systemd import FakeSystemd

__all__ = ["FakeSystemd"]
