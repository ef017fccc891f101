"""One writer per target: a Postgres advisory lock named after what a job writes.

Held on its own connection for the whole transfer; Postgres drops it if the
worker dies, so a crashed worker never leaves a target locked.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, Engine, func, select


def lock_key(name: str) -> int:
    """A signed 64-bit key for ``pg_try_advisory_lock``."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(),
                          "big", signed=True)


class TargetLock:
    def __init__(self, engine: Engine, name: str) -> None:
        self.name = name
        self.key = lock_key(name)
        self._engine = engine
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        """True when this worker now holds the target (blocking call: run it in a thread)."""
        conn = self._engine.connect()
        try:
            got = bool(conn.execute(select(func.pg_try_advisory_lock(self.key))).scalar())
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(select(func.pg_advisory_unlock(self.key)))
            conn.commit()
        except Exception:  # noqa: BLE001 - whatever failed, end the session
            conn.invalidate()  # end the Postgres session: that drops the lock for sure
        finally:
            conn.close()
