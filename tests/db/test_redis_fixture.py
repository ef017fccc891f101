"""The private redis-server fixture: ours alone, flushed per test, restartable."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import redis
from pytest import raises

from tests.fixtures.redis import RedisServer


def test_private_server_is_not_the_shared_one(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port != 6379
    with redis.Redis.from_url(redis_url) as client:
        info = client.info("persistence")
        assert info["aof_enabled"] == 0
        assert client.config_get("save") == {"save": ""}


def test_flushed_before_each_test_part_one(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("ketter:left-behind", "1")


def test_flushed_before_each_test_part_two(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("ketter:left-behind") is None


def test_stop_and_start_on_the_same_port(redis_server: RedisServer, redis_url: str) -> None:
    port = redis_server.port
    with redis.Redis.from_url(redis_url, socket_connect_timeout=1) as client:
        client.set("k", "v")
        redis_server.stop()
        assert not redis_server.running
        with raises(redis.ConnectionError):
            client.ping()
        redis_server.start()
        assert redis_server.running and redis_server.port == port
        assert client.ping()  # the client reconnects to the same URL
        assert client.get("k") is None  # no persistence: a restart starts empty


def test_stopped_server_is_restarted_for_the_next_test(redis_server: RedisServer) -> None:
    redis_server.stop()
    assert not redis_server.ping()


def test_redis_url_restarts_a_stopped_server(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_server.running and redis_server.ping()
    redis_server.flushall()
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def test_a_killed_pytest_leaves_no_redis_server(tmp_path: Path) -> None:
    """The private server dies with the process that started it, even on SIGKILL."""
    script = (
        "import sys, time; from pathlib import Path; "
        "from tests.fixtures.redis import start_redis_server; "
        f"s = start_redis_server(Path({str(tmp_path)!r})); "
        "print(s.port, flush=True); time.sleep(60)"
    )
    root = Path(__file__).resolve().parents[2]
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True
    )
    port = 0
    try:
        assert owner.stdout is not None
        port = int(owner.stdout.readline())
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as client:
            assert client.ping()
        owner.kill()
        owner.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _answers(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _answers(port)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=10)
        if owner.stdout is not None:
            owner.stdout.close()
        if port and _answers(port):  # the test failed: do not leave the orphan running
            with redis.Redis(host="127.0.0.1", port=port) as client, suppress(redis.RedisError):
                client.shutdown(nosave=True)


def test_a_bad_start_reports_the_servers_own_words(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.port = 70000  # redis refuses it
    with raises(RuntimeError, match="redis-server exited"):
        server.start()
    assert not server.running


def _answers(port: int) -> bool:
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False
