"""Long-lived clients the API shares between requests: DB engines and the arq queue.

Keyed by URL so a test that overrides ``get_settings`` with another database or
Redis gets its own clients; closed in the app's lifespan.
"""

from __future__ import annotations

import threading

from arq.connections import ArqRedis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mvp_core.db.session import make_engine, make_session_factory
from mvp_core.dispatch import make_queue_redis


class Resources:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[str, Engine] = {}
        self._factories: dict[str, sessionmaker[Session]] = {}
        self._queues: dict[tuple[str, str], ArqRedis] = {}

    def session_factory(self, database_url: str) -> sessionmaker[Session]:
        with self._lock:
            factory = self._factories.get(database_url)
            if factory is None:
                engine = make_engine(database_url)
                self._engines[database_url] = engine
                factory = self._factories[database_url] = make_session_factory(engine)
            return factory

    def queue(self, redis_url: str, queue_name: str) -> ArqRedis:
        """The arq client (created lazily: the API starts even while Redis is down)."""
        key = (redis_url, queue_name)
        with self._lock:
            client = self._queues.get(key)
            if client is None:
                client = self._queues[key] = make_queue_redis(redis_url, queue_name=queue_name)
            return client

    async def close(self) -> None:
        with self._lock:
            queues, self._queues = list(self._queues.values()), {}
            engines, self._engines = list(self._engines.values()), {}
            self._factories = {}
        for client in queues:
            await client.aclose()
        for engine in engines:
            engine.dispose()
