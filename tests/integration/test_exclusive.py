"""A second skiff on ports another one serves refuses to start, naming the other one, unless told to share."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from control.exclusive import listener_conflict, parse_proc_net
from tests.support import PYTHON, ROOT, Echo, Skiff, app, echo_roundtrip, free_ports, running, write_config


def start_second(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, str(ROOT / "supervisor.py"), "-c", str(config), "-w", "1", "--bind", "127.0.0.1", "--grace", "1",
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_second_instance_on_the_same_ports_refuses_with_one_line(tmp_path: Path) -> None:
    """1. skiff A serves two ports. 2. skiff B (another --instance) with a config sharing one of them exits 3
    with one line naming A's pid, its instance and the shared port, and A still serves. 3. The same with
    --share-ports starts (and is stopped)."""
    port, other, target = free_ports(3)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    write_config(first, [app("a", [port, other], [f"127.0.0.1:{target}"])])
    write_config(second, [app("b", [port], [f"127.0.0.1:{target}"])])
    echo = Echo([target])
    skiff = Skiff(first)
    with running(echo, skiff):
        refused = start_second(second, "--instance", "other")
        assert refused.returncode == 3, refused.stderr
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, refused.stderr
        assert f"ports {port} on 127.0.0.1 are already served by skiff supervisor pid {skiff.proc.pid}" in lines[0]
        assert "instance default" in lines[0] and "--share-ports" in lines[0]
        assert "Traceback" not in refused.stderr
        assert echo_roundtrip(port) == b"ping"
        shared = Skiff(second, "--instance", "other", "--share-ports", workers=1)
        with running(shared):
            assert echo_roundtrip(port) == b"ping"


def test_any_reuseport_listener_of_our_uid_counts() -> None:
    """A plain SO_REUSEPORT listener of this uid on the port is named by pid; with our bind on another
    loopback address it is not in the way."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        line = listener_conflict("127.0.0.1", [port])
        # Our own sockets (inherited from a descriptor store, say) are never a conflict.
        assert line is None
        with subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                              pass_fds=(sock.fileno(),)) as holder:
            sock.close()
            try:
                line = listener_conflict("0.0.0.0", [port])
                assert line is not None and f"ports {port} on 0.0.0.0" in line and f"pid {holder.pid}" in line
                assert listener_conflict("127.0.0.2", [port]) is None
            finally:
                assert holder.stdin is not None
                holder.stdin.close()
                holder.wait(10)
    finally:
        sock.close()


def test_proc_net_lines_parse_to_listeners() -> None:
    text = (" sl local_address rem_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode\n"
            " 0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4242 1 0 100 0 0 10 0\n"
            " 1: 0100007F:1F91 00000000:0000 01 00000000:00000000 00:00000000 00000000 0 0 4243 1 0 100 0 0 10 0\n"
            " 2: 0100007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000 1000 0 4244 1 0 100 0 0 10 0\n")
    found = parse_proc_net(text, 0)
    assert [(str(x.address), x.port, x.inode) for x in found] == [("127.0.0.1", 8080, 4242)]
