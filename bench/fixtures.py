"""The long-lived processes of a run: backends (nginx, iperf3 server, idle server) and proxies (HAProxy, skiff).

`Processes` owns every process the harness starts and stops them all by PID, descendants included, even
when the run fails or is interrupted. Config files are written into the run's temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


class FixtureError(RuntimeError):
    """A process of the run could not be started or did not become ready."""


@dataclass(frozen=True)
class Ports:
    """The three ports a target serves: HTTP (nginx), bulk (iperf3) and idle (idle server)."""

    http: int
    bulk: int
    idle: int

    def all(self) -> tuple[int, int, int]:
        return (self.http, self.bulk, self.idle)


@dataclass(frozen=True)
class Target:
    """Something the loads go through: the direct path (pid None) or a proxy whose process tree is measured."""

    name: str
    ports: Ports
    pid: int | None


class Processes:
    """Starts processes with their output in log files, and stops all of them, by PID, in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.commands: list[str] = []

    def start(self, name: str, argv: list[str], stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        self.commands.append(shlex.join(argv))
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it; closed below
        try:
            # A session of its own keeps the terminal's Ctrl-C away from the children: we stop them in order.
            proc = subprocess.Popen(argv, stdin=stdin, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.started.append((name, proc))
        return proc

    def start_piped(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Like start, but stdin and stdout are pipes to us (for idle.py's `ready` line and stdin EOF)."""
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, start_new_session=True
        )
        self.started.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process, then SIGKILL it and every descendant it had, each by PID, after a deadline."""
        if proc.poll() is None:
            try:
                family = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                family = []
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"bench: pid {proc.pid} ignored SIGTERM for {STOP_TIMEOUT_S:.0f}s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
            _, alive = psutil.wait_procs(family, timeout=STOP_TIMEOUT_S)
            for child in alive:
                print(f"bench: descendant {child.pid} outlived its parent; killing it", file=sys.stderr)
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def stop_piped(self, proc: subprocess.Popen[bytes]) -> None:
        """End a process started with start_piped by closing its stdin (its cue to exit), then as `stop`."""
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT_S)
        self.stop(proc)
        self.started = [(n, p) for n, p in self.started if p is not proc]

    def stop_pid(self, pid: int) -> None:
        """Stop one process started here, found by its PID."""
        for name, proc in self.started:
            if proc.pid == pid:
                self.stop(proc)
                self.started.remove((name, proc))
                return
        raise ValueError(f"pid {pid} was not started by this harness")

    def stop_all(self) -> None:
        while self.started:
            _, proc = self.started.pop()
            self.stop(proc)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the servers bind: TIME_WAIT sockets left by an earlier run do not make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def require_free(ports: list[int]) -> None:
    busy = sorted({p for p in ports if not port_is_free(p)})
    if busy:
        raise FixtureError(f"ports already in use on 127.0.0.1: {busy}; pick another --base-port")


def wait_listening(procs: Processes, name: str, proc: subprocess.Popen[bytes], ports: tuple[int, ...]) -> None:
    """Wait until every port accepts a TCP connection; fail at once if the process exits meanwhile."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            raise FixtureError(f"{name} exited with {proc.returncode}:\n{procs.log_tail(name)}")
        if time.monotonic() > deadline:
            waited = f"{READY_TIMEOUT_S:.0f}s"
            raise FixtureError(f"{name} not listening on {pending} after {waited}:\n{procs.log_tail(name)}")
        try:
            socket.create_connection(("127.0.0.1", pending[0]), timeout=1.0).close()
            pending.pop(0)
        except OSError:
            time.sleep(0.1)


def nginx_config(prefix: Path, port: int) -> str:
    return f"""\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def haproxy_config(ports: Ports, backends: Ports) -> str:
    # maxconn 9500: room for the 9,000 idle connections while 2*maxconn fds stay under the hard limit (20,000);
    # the operator's comparison of issue 14 uses the same figure (it sizes HAProxy's preallocated tables).
    sections = [
        "global\n    nbthread 1\n    maxconn 9500\n",
        "defaults\n    mode tcp\n    maxconn 9500\n    timeout connect 5s\n"
        "    timeout client 300s\n    timeout server 300s\n",
    ]
    for name, port, backend in (
        ("http", ports.http, backends.http),
        ("bulk", ports.bulk, backends.bulk),
        ("idle", ports.idle, backends.idle),
    ):
        sections.append(
            f"listen {name}\n    bind 127.0.0.1:{port}\n    server {name}1 127.0.0.1:{backend}\n"
        )
    return "\n".join(sections)


def skiff_config(ports: Ports, backends: Ports) -> str:
    apps = [
        {"Name": f"bench-{name}", "Ports": [port], "Targets": [f"127.0.0.1:{backend}"]}
        for name, port, backend in (
            ("http", ports.http, backends.http),
            ("bulk", ports.bulk, backends.bulk),
            ("idle", ports.idle, backends.idle),
        )
    ]
    return json.dumps({"Apps": apps}, indent=2) + "\n"


def start_nginx(procs: Processes, tmp: Path, port: int, configs: dict[str, str]) -> None:
    prefix = tmp / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, port))
    configs["nginx.conf"] = conf.read_text()
    proc = procs.start("nginx", ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")])
    wait_listening(procs, "nginx", proc, (port,))


def start_iperf3_server(procs: Processes, port: int) -> None:
    proc = procs.start("iperf3-server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)])
    wait_listening(procs, "iperf3-server", proc, (port,))


def start_idle_server(procs: Processes, port: int) -> int:
    proc = procs.start("idle-server", [sys.executable, str(BENCH_DIR / "idle.py"), "serve", f"127.0.0.1:{port}"])
    wait_listening(procs, "idle-server", proc, (port,))
    return proc.pid


def start_haproxy(procs: Processes, tmp: Path, ports: Ports, backends: Ports, configs: dict[str, str]) -> Target:
    conf = tmp / "haproxy.cfg"
    conf.write_text(haproxy_config(ports, backends))
    configs["haproxy.cfg"] = conf.read_text()
    # -db: stay in the foreground, one process (no master-worker), so its PID is the whole proxy.
    proc = procs.start("haproxy", ["haproxy", "-db", "-f", str(conf)])
    wait_listening(procs, "haproxy", proc, ports.all())
    return Target("haproxy", ports, proc.pid)


def start_skiff(
    procs: Processes, tmp: Path, command: list[str], workers: int, ports: Ports, backends: Ports,
    configs: dict[str, str], name: str | None = None,
) -> Target:
    """skiff (or anything with its command line and config: the floor relay, a stand-in) with N workers."""
    name = name or f"skiff-w{workers}"
    conf = tmp / f"{name}.json"
    conf.write_text(skiff_config(ports, backends))
    configs[f"{name}.json"] = conf.read_text()
    proc = procs.start(name, [*command, "-c", str(conf), "-w", str(workers)])
    wait_listening(procs, name, proc, ports.all())
    return Target(name, ports, proc.pid)
