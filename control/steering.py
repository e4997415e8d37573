"""Choosing how connections reach the workers: one socket per port per worker (reuseport), or BPF sk_lookup
steering onto one listener per worker group (bpf). `auto` probes and falls back with one clear line."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from proxy.logs import log_event

log = logging.getLogger("supervisor")

MODES = ("reuseport", "bpf", "auto")
DEFAULT_OBJECT = Path(__file__).resolve().parent.parent / "bpf" / "skiff.bpf.o"


class SteeringUnavailable(Exception):
    """bpf mode was asked for and cannot work here: one line for the operator."""


@dataclass(frozen=True, slots=True)
class SteeringChoice:
    mode: str  # "reuseport" or "bpf"
    reason: str | None = None  # why auto fell back


def choose_steering(requested: str, obj_path: Path) -> SteeringChoice:
    if requested == "reuseport":
        return SteeringChoice("reuseport")
    try:
        from bpf.loader import probe
    except OSError as exc:  # libbpf.so.1 is missing
        problem: str | None = f"bpf: cannot load libbpf: {exc}"
    else:
        problem = probe(obj_path)
    if problem is None:
        return SteeringChoice("bpf")
    if requested == "bpf":
        raise SteeringUnavailable(f"--steering bpf cannot work here: {problem}")
    log_event(log, logging.WARNING, "steering_fallback",
              f"--steering auto: BPF steering unavailable ({problem}); using one socket per port per worker",
              error=problem)
    return SteeringChoice("reuseport", problem)
