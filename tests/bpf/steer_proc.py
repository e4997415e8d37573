"""A separate Python process driving Steering, as a (re)started supervisor would; used by the lifecycle tests.

Usage: steer_proc.py MODE INSTANCE OBJECT PIN_ROOT [SOCKET_FD]; prints one JSON line with what it saw.
  start     open, point group 0 at SOCKET_FD, steer 7001 → 0, close(unpin=False)
  takeover  open (taking over the pins), report ports and group 0's socket cookie, repoint group 0 at
            SOCKET_FD, close(unpin=False)
  hold      open, print, wait for stdin to close, close(unpin=True)
  finish    open, close(unpin=True)
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from bpf.loader import Steering, SteeringError


def main(argv: list[str]) -> int:
    mode, instance, obj, pin_root = argv[:4]
    sock = socket.socket(fileno=int(argv[4])) if len(argv) > 4 else None
    try:
        steering = Steering.open(instance, Path(obj), pin_root=Path(pin_root))
    except SteeringError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    report: dict[str, object] = {}
    if mode == "start" and sock:
        steering.set_group_socket(0, sock)
        steering.apply_ports({7001: 0})
    elif mode == "takeover" and sock:
        report = {"ports": steering.ports(), "cookie": steering.group_socket_cookie(0)}
        steering.set_group_socket(0, sock)
    elif mode == "hold":
        print(json.dumps({"holding": True}), flush=True)
        sys.stdin.read()
    print(json.dumps(report), flush=True)
    steering.close(unpin=mode in ("hold", "finish"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
