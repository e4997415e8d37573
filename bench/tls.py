"""TLS termination: skiff -w 1 against HAProxy nbthread 1, same run, same ECDSA P-256 certificate, loopback.

    .venv/bin/python bench/tls.py --rounds 3 --out bench/TLS.md      # about 2 minutes
    .venv/bin/python bench/tls.py --rounds 1 --duration 3            # a quick look

Loads (interleaved per round, so drift hits both proxies alike):
- full handshakes/s: CLIENTS client processes, each a loop of: a new TCP connection, a full TLS 1.3 handshake
  with SNI (no session offered: no resumption; `openssl s_time` cannot send SNI), close; session tickets and
  caches are off on both proxies; the clients do not verify the certificate (they share the 2 cores);
- bulk Gbit/s: one TLS client writing 256 KiB chunks through termination to a plaintext sink.
Proxy CPU (user+system of every proxy process) is measured over each load and reported per handshake and
per GB. Every process started here is stopped by PID on exit, failure and Ctrl-C alike.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
NAME = "bench.example.test"
CLIENTS = 3  # parallel handshake clients (the 2 cores also run the proxy and the backend)
CHUNK = 256 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    paths = directory / "bench.crt", directory / "bench.key", directory / "bench.pem"
    paths[0].write_bytes(cert_pem)
    paths[1].write_bytes(key_pem)
    paths[2].write_bytes(cert_pem + key_pem)  # HAProxy's crt: certificate and key in one file
    return paths


class Sink:
    """The backend: accepts, reads and discards (bulk); a handshake's connection just closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.drain, args=(conn,), daemon=True).start()

    @staticmethod
    def drain(conn: socket.socket) -> None:
        buffer = bytearray(1 << 20)
        with conn:
            try:
                while conn.recv_into(buffer):
                    pass
            except OSError:
                pass


@dataclass
class Proxy:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu(self) -> float:
        total = 0.0
        for process in self.processes():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_skiff(directory: Path, cert: Path, key: Path, backend: int) -> Proxy:
    port = free_port()
    config = directory / "skiff.json"
    config.write_bytes(orjson.dumps({"Tls": {"Ports": [port]}, "Apps": [
        {"Name": "bench", "Hostnames": [NAME], "Targets": [f"127.0.0.1:{backend}"], "Certificate": str(cert),
         "Key": str(key)}]}))
    proc = subprocess.Popen([sys.executable, str(REPO / "supervisor.py"), "-c", str(config), "-w", "1", "--bind",
                             "127.0.0.1", "--log-level", "warning"], cwd=REPO)
    wait_listening(port, proc)
    return Proxy("skiff -w 1", port, proc)


def start_haproxy(directory: Path, pem: Path, backend: int) -> Proxy:
    port = free_port()
    config = directory / "haproxy.cfg"
    config.write_text(f"""global
    nbthread 1
    maxconn 8000
    tune.ssl.cachesize 0
    ssl-default-bind-options no-tls-tickets
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem} no-tls-tickets
    default_backend plain
backend plain
    server sink 127.0.0.1:{backend}
""")
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"  # /usr/sbin may be missing from PATH
    proc = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=subprocess.DEVNULL)
    wait_listening(port, proc)
    return Proxy("HAProxy nbthread 1", port, proc)


def handshakes(proxy: Proxy, seconds: int) -> tuple[float, float]:
    """(full handshakes per second, proxy CPU seconds per handshake)."""
    cpu = proxy.cpu()
    started = time.monotonic()
    clients = [subprocess.Popen([sys.executable, __file__, "--client", str(proxy.port), str(seconds)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(CLIENTS)]
    total = 0
    for client in clients:
        out, _ = client.communicate(timeout=seconds + 60)
        found = re.search(rb"^(\d+) handshakes$", out, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"handshake client: {out.decode(errors='replace')[-300:]}")
        total += int(found.group(1))
    elapsed = time.monotonic() - started
    used = proxy.cpu() - cpu
    return total / elapsed, used / max(total, 1)


def handshake_client(port: int, seconds: float) -> int:
    """One client process: full handshakes, one after another, for `seconds`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=NAME):
            done += 1
    return done


def bulk(proxy: Proxy, seconds: int) -> tuple[float, float]:
    """(Gbit/s through termination, proxy CPU seconds per GB)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    chunk = os.urandom(CHUNK)
    with socket.create_connection(("127.0.0.1", proxy.port)) as raw, \
            context.wrap_socket(raw, server_hostname=NAME) as tls:
        cpu = proxy.cpu()
        sent, started = 0, time.monotonic()
        deadline = started + seconds
        while time.monotonic() < deadline:
            tls.sendall(chunk)
            sent += CHUNK
        elapsed = time.monotonic() - started
        used = proxy.cpu() - cpu
    return sent * 8 / elapsed / 1e9, used / (sent / 1e9)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--client"]:
        print(f"{handshake_client(int(argv[1]), float(argv[2]))} handshakes")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per load (default 8)")
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="skiff-tls-bench-") as tmp:
        directory = Path(tmp)
        cert, key, pem = make_certificate(directory)
        sink = Sink()
        proxies = [start_haproxy(directory, pem, sink.port), start_skiff(directory, cert, key, sink.port)]
        try:
            for round_no in range(args.rounds):
                for proxy in proxies:
                    row = results.setdefault(proxy.name, {"hs": [], "hs_cpu": [], "gbit": [], "gb_cpu": []})
                    rate, per = handshakes(proxy, args.duration)
                    time.sleep(1.0)  # the closed connections' TIME_WAIT churn settles between loads
                    gbit, per_gb = bulk(proxy, args.duration)
                    row["hs"].append(rate)
                    row["hs_cpu"].append(per)
                    row["gbit"].append(gbit)
                    row["gb_cpu"].append(per_gb)
                    print(f"round {round_no + 1} {proxy.name}: {rate:,.0f} handshakes/s ({per * 1e6:,.0f} us CPU "
                          f"each), {gbit:.2f} Gbit/s ({per_gb:.2f} CPU s/GB)", flush=True)
                    time.sleep(1.0)
        finally:
            for proxy in proxies:
                proxy.stop()
            sink.sock.close()
    table = render(results, args)
    print(table)
    if args.out is not None:
        args.out.write_text(table)
    return 0


def render(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    base = {k: statistics.median(v) for k, v in results["HAProxy nbthread 1"].items()}
    lines = [
        "# TLS termination: skiff -w 1 against HAProxy nbthread 1",
        "",
        "Written by `bench/tls.py` (`make bench`). Same run, same ECDSA P-256 certificate, TLS 1.3, no session "
        "resumption or tickets on either proxy, plaintext to the same sink.",
        f"Medians of {args.rounds} interleaved rounds, {args.duration} s per load, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores shared with the "
        f"clients ({CLIENTS} handshake loops, one bulk writer: Python `ssl`), the sink, and whatever else runs "
        f"(load average {os.getloadavg()[0]:.1f} at the end).",
        "",
        "| proxy | full handshakes/s (x HAProxy) | proxy CPU per handshake (x HAProxy) | handshakes per core-second "
        "(x HAProxy) | bulk Gbit/s (x HAProxy) | proxy CPU s/GB |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    for name, row in results.items():
        m = {k: statistics.median(v) for k, v in row.items()}
        per_core, base_core = 1 / m["hs_cpu"], 1 / base["hs_cpu"]
        lines.append(f"| {name} | {m['hs']:,.0f} ({m['hs'] / base['hs']:.2f}) | {m['hs_cpu'] * 1e6:,.0f} us "
                     f"({m['hs_cpu'] / base['hs_cpu']:.2f}) | {per_core:,.0f} ({per_core / base_core:.2f}) | "
                     f"{m['gbit']:.2f} ({m['gbit'] / base['gbit']:.2f}) | {m['gb_cpu']:.2f} |")
        if name.startswith("skiff"):
            verdicts = [
                f"- handshakes >= 0.8x HAProxy per core: {per_core / base_core:.2f}x by CPU per handshake "
                f"({'met' if per_core / base_core >= 0.8 else 'NOT met'}); {m['hs'] / base['hs']:.2f}x by rate "
                "(the rate is bounded by the clients sharing the cores, so CPU per handshake is the per-core figure)",
                f"- bulk >= 0.7x HAProxy: {m['gbit'] / base['gbit']:.2f}x "
                f"({'met' if m['gbit'] / base['gbit'] >= 0.7 else 'NOT met'})",
            ]
    lines += ["", "Goals:", *verdicts, "", "Every round:", ""]
    for name, row in results.items():
        for i in range(len(row["hs"])):
            lines.append(f"- {name}, round {i + 1}: {row['hs'][i]:,.0f} handshakes/s, {row['hs_cpu'][i] * 1e6:,.0f} us "
                         f"CPU each; {row['gbit'][i]:.2f} Gbit/s, {row['gb_cpu'][i]:.2f} CPU s/GB")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
