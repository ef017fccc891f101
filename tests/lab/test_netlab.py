"""The bench lab: the delaying relay adds the RTT it is asked for and loses nothing; the
delay line delays every packet (so one TCP connection is bounded by its window, as on a
WAN) and loses nothing; netlab.sh brings two namespaces up (ssh across both links works,
RTT as asked) and down (namespaces and processes gone). Runs as root, like `make bench`."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "infra" / "lab"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(1 << 16):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return srv, int(srv.getsockname()[1])


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"relay never listened on {port}")


def test_relay_adds_rtt_and_keeps_bytes_in_order() -> None:
    srv, echo_port = _echo_server()
    port = _free_port()
    relay = subprocess.Popen([sys.executable, str(LAB / "delay_relay.py"), "--listen", f"127.0.0.1:{port}",
                              "--to", f"127.0.0.1:{echo_port}", "--rtt-ms", "40"])
    try:
        _wait_port(port)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                conn.sendall(b"x")
                assert conn.recv(1) == b"x"
                times.append(time.perf_counter() - t0)
            assert 0.038 <= min(times) and sorted(times)[2] < 0.2, times
            payload = os.urandom(3 * 1024 * 1024)
            sender = threading.Thread(target=conn.sendall, args=(payload,))
            sender.start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = conn.recv(1 << 20)
                assert chunk, "relay closed early"
                got += chunk
            sender.join()
            assert bytes(got) == payload
    finally:
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(timeout=10) == 0
        srv.close()


def _netlab(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LAB / "netlab.sh"), *args], check=False, env=env, text=True,
                          capture_output=True, timeout=90)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], text=True, capture_output=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_netlab_up_gives_ssh_with_the_rtt_asked_and_down_leaves_nothing(tmp_path: Path) -> None:
    name = f"kt{secrets.token_hex(3)}"
    env = {**os.environ, "LAB_NAME": name, "LAB_DIR": str(tmp_path / "lab"), "LAB_RTT_MS": "30",
           "LAB_CHECK_MIB": "0", "KETTER_PG_PORT": "5432", "KETTER_REDIS_PORT": "6379"}
    pids: list[int] = []
    try:
        up = _netlab(["up"], env)
        assert up.returncode == 0, up.stderr
        assert {f"{name}-lab", f"{name}-remote"} <= _namespaces()
        rtt = json.loads(re.search(r"via the long link .*?(\{.*\})", up.stdout).group(1))  # type: ignore[union-attr]
        assert 29 <= rtt["rtt_ms_median"] < 80, up.stdout
        direct = json.loads(re.search(r"on the LAN .*?(\{.*\})", up.stdout).group(1))  # type: ignore[union-attr]
        assert direct["rtt_ms_median"] < 10, up.stdout
        # lab.env is what its header says: a file bash can source
        sourced = subprocess.run(
            ["bash", "-c", 'set -e; source "$1"; printf "%s\\n" "$LAB_DELAY_MODE" "$SSH_PORT"',
             "bash", str(tmp_path / "lab" / "lab.env")], capture_output=True, text=True,
            check=False)
        assert sourced.returncode == 0, sourced.stderr
        delay_mode, port = sourced.stdout.splitlines()
        assert delay_mode.startswith("delay line") and port.isdigit(), sourced.stdout
        lab_env = dict(line.split("=", 1) for line in (tmp_path / "lab" / "lab.env").read_text().splitlines()
                       if "=" in line and not line.startswith("#"))
        # ssh from LAB to REMOTE over each link, strict host key, key only
        for host in (lab_env["REMOTE_ADDR"], lab_env["REMOTE_ADDR_DELAYED"]):
            ssh = _netlab(["exec", "ssh", "-p", lab_env["SSH_PORT"], "-i", lab_env["IDENTITY"],
                           "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={lab_env['KNOWN_HOSTS']}",
                           "-o", "StrictHostKeyChecking=yes", f"root@{host}", "echo", "over-the-link"], env)
            assert ssh.returncode == 0 and ssh.stdout.strip() == "over-the-link", ssh.stderr
        # `rtt` restarts the line: its devices come back with their addresses, sshd still answers
        again = _netlab(["rtt", "40"], env)
        assert again.returncode == 0, again.stderr
        ssh = _netlab(["exec", "ssh", "-p", lab_env["SSH_PORT"], "-i", lab_env["IDENTITY"],
                       "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={lab_env['KNOWN_HOSTS']}",
                       f"root@{lab_env['REMOTE_ADDR_DELAYED']}", "echo", "after-rtt"], env)
        assert ssh.returncode == 0 and ssh.stdout.strip() == "after-rtt", ssh.stderr
        # the host's network is not reachable from LAB: no route out
        out = _netlab(["exec", "ip", "route"], env).stdout
        assert "default" not in out and "10.203.0.0/30" in out and "10.203.1.2" in out
        status = _netlab(["status"], env)
        assert status.returncode == 0 and "line: pid" in status.stdout and "NOT running" not in status.stdout
        pids = [int(p.read_text()) for p in (tmp_path / "lab" / "run").glob("*.pid")]
        assert pids
    finally:
        down = _netlab(["down"], env)
    assert down.returncode == 0, down.stderr
    assert not {f"{name}-lab", f"{name}-remote"} & _namespaces()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert _netlab(["status"], env).returncode == 3


# Run inside the receiving namespace: accept one connection, echo 64 single bytes back,
# then drain the bulk part and answer with its sha256.
_LINE_SERVER = """
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], 5009))
print("ready", flush=True)
conn, _ = srv.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(5):
    conn.sendall(conn.recv(1))
h, n = hashlib.sha256(), int(sys.argv[2])
while n:
    chunk = conn.recv(min(n, 1 << 20))
    h.update(chunk)
    n -= len(chunk)
conn.sendall(h.hexdigest().encode())
"""

# Run inside the sending namespace: echo times, then the bulk part through a small send
# buffer (in flight is bounded by it), timed until the receiver's digest comes back.
_LINE_CLIENT = """
import hashlib, json, os, socket, sys, time
conn = socket.socket()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
conn.connect((sys.argv[1], 5009))
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
echo = []
for _ in range(5):
    t0 = time.perf_counter(); conn.sendall(b"x"); assert conn.recv(1) == b"x"
    echo.append(time.perf_counter() - t0)
payload = os.urandom(int(sys.argv[2]))
t0 = time.perf_counter()
conn.sendall(payload)
digest = conn.recv(64).decode()
print(json.dumps({"echo_s": echo, "bulk_s": time.perf_counter() - t0,
                  "intact": digest == hashlib.sha256(payload).hexdigest()}))
"""


def test_delay_line_delays_every_packet_so_one_connection_is_bound_by_its_window(tmp_path: Path) -> None:
    """Through the line, in-flight data is bounded by the sender's window: 2 MiB through a
    128 KiB send buffer (the kernel doubles 64 KiB) at 60 ms needs at least ~15 round trips.
    Through the stream relay the same transfer would take one (the relay acknowledges
    everything at once); that difference is what the WAN bench needs."""
    tag = secrets.token_hex(3)
    a, b = f"kla{tag}", f"klb{tag}"
    size = 2 * 1024 * 1024
    line = server = None
    try:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        line = subprocess.Popen([sys.executable, str(LAB / "delay_line.py"), "--lab-ns", a, "--remote-ns", b,
                                 "--lab-dev", f"{a}w", "--remote-dev", f"{b}w", "--rtt-ms", "60",
                                 "--rate", "1gbit", "--ready", str(tmp_path / "ready")],
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (tmp_path / "ready").exists():
            assert line.poll() is None and time.monotonic() < deadline, "the line never came up"
            time.sleep(0.05)
        for ns, dev, me, peer in ((a, f"{a}w", "10.209.0.1", "10.209.0.2"), (b, f"{b}w", "10.209.0.2", "10.209.0.1")):
            subprocess.run(["ip", "-n", ns, "addr", "add", me, "peer", peer, "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", _LINE_SERVER,
                                   "10.209.0.2", str(size)], stdout=subprocess.PIPE, text=True)
        assert server.stdout and server.stdout.readline().strip() == "ready"
        client = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", _LINE_CLIENT,
                                 "10.209.0.2", str(size)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert client.returncode == 0, client.stderr
        got = json.loads(client.stdout)
        assert got["intact"], "the bytes that crossed the line differ from those sent"
        assert min(got["echo_s"]) >= 0.059, got          # never earlier than the RTT asked
        # 2 MiB / 128 KiB = 16 windows: at least ~15 round trips of 60 ms
        assert got["bulk_s"] >= 0.8, got
    finally:
        for proc in (server, line):
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)
        if server and server.stdout:
            server.stdout.close()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    assert line.returncode == 0
