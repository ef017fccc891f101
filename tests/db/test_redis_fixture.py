"""The private redis-server fixture: ours alone, flushed per test, restartable."""

from __future__ import annotations

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
