"""The bench lab: the delaying relay adds the RTT it is asked for and loses nothing,
and netlab.sh brings two namespaces up (ssh across them works, RTT as asked) and down
(namespaces and processes gone). Runs as root, like `make bench`."""

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
        rtt = json.loads(re.search(r"via relay .*?(\{.*\})", up.stdout).group(1))  # type: ignore[union-attr]
        assert 29 <= rtt["rtt_ms_median"] < 80, up.stdout
        direct = json.loads(re.search(r"direct .*?(\{.*\})", up.stdout).group(1))  # type: ignore[union-attr]
        assert direct["rtt_ms_median"] < 10, up.stdout
        # lab.env is what its header says: a file bash can source
        sourced = subprocess.run(
            ["bash", "-c", 'set -e; source "$1"; printf "%s\\n" "$LAB_DELAY_MODE" "$SSH_PORT_DELAYED"',
             "bash", str(tmp_path / "lab" / "lab.env")], capture_output=True, text=True)
        assert sourced.returncode == 0, sourced.stderr
        delay_mode, delayed_port = sourced.stdout.splitlines()
        assert delay_mode.startswith(("netem", "relay")) and delayed_port.isdigit(), sourced.stdout
        lab_env = dict(line.split("=", 1) for line in (tmp_path / "lab" / "lab.env").read_text().splitlines()
                       if "=" in line and not line.startswith("#"))
        # ssh from LAB to REMOTE through the relay, strict host key, key only
        ssh = _netlab(["exec", "ssh", "-p", lab_env["SSH_PORT_DELAYED"], "-i", lab_env["IDENTITY"],
                       "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={lab_env['KNOWN_HOSTS']}",
                       "-o", "StrictHostKeyChecking=yes", f"root@{lab_env['REMOTE_ADDR']}", "echo", "over-the-link"],
                      env)
        assert ssh.returncode == 0 and ssh.stdout.strip() == "over-the-link", ssh.stderr
        # the host's network is not reachable from LAB: no route out
        out = _netlab(["exec", "ip", "route"], env).stdout
        assert "default" not in out and "10.203.0.0/30" in out
        status = _netlab(["status"], env)
        assert status.returncode == 0 and "relay: pid" in status.stdout and "NOT running" not in status.stdout
        pids = [int(p.read_text()) for p in (tmp_path / "lab" / "run").glob("*.pid")]
        assert pids
    finally:
        down = _netlab(["down"], env)
    assert down.returncode == 0, down.stderr
    assert not {f"{name}-lab", f"{name}-remote"} & _namespaces()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert _netlab(["status"], env).returncode == 3
