"""Hardening helpers: the service stack with portals, and a Postgres "freeze" at a phase.

Reuses the shared fixtures (``ketter_stack``, ``sshd``, trees) and the service-test
helpers; only what fault tests need on top lives here.

``Freezer`` pauses the worker's engine thread at an exact point of a job (a phase
event, or the first progress write inside a phase) with a test-only trigger that
``pg_sleep``s inside that write. The worker, rsync, zip, unzip and ssh stay real; the
trigger only decides *when* the test strikes. Phases rsync drives are slowed with the
bandwidth limit instead (``KETTER_RSYNC_BWLIMIT_KIB_S``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.fixtures.sshd import SSHD, SshServer, _wait_for_port, start_sshd
from tests.fixtures.stack import Stack, wait_until
from tests.service.conftest import Portals, create_portals

FINAL = frozenset({"DONE", "FAILED", "CANCELLED"})
FREEZE_S = 120  # longer than any test: the frozen backend is terminated, never waited for


def submit(client: httpx.Client, portals: Portals, source: str, **extra: Any) -> dict[str, Any]:
    body = {"source_portal_id": portals.local_src, "source_path": source,
            "target_portal_id": portals.ssh_dst, "target_path": "", **extra}
    response = client.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def local_portal(client: httpx.Client, name: str, base: Path, **extra: Any) -> int:
    """A local portal at ``base`` (made if missing); ``extra``: site, limits."""
    base.mkdir(parents=True, exist_ok=True)
    response = client.post("/portals", json={"name": name, "kind": "local",
                                             "base_path": str(base), **extra})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def submit_between(client: httpx.Client, src: int, source: str, dst: int) -> dict[str, Any]:
    """A job from portal ``src`` (its ``source``) into portal ``dst``'s base."""
    response = client.post("/jobs", json={"source_portal_id": src, "source_path": source,
                                          "target_portal_id": dst, "target_path": ""})
    assert response.status_code == 201, response.text
    return dict(response.json())


def temp_files(env: dict[str, str]) -> list[Path]:
    """Every file in the local and remote temp dirs of this stack (empty = clean)."""
    found: list[Path] = []
    for key in ("KETTER_TEMP_DIR", "KETTER_REMOTE_TEMP_DIR"):
        d = Path(env[key])
        if d.exists():
            found += [p for p in d.rglob("*") if p.is_file()]
    return found


def event_types(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_type"] for e in events]


@pytest.fixture
def api_client(ketter_stack: Stack) -> httpx.Client:
    return ketter_stack.client(ketter_stack.start_api())


@pytest.fixture
def portals(api_client: httpx.Client, tmp_path: Path, sshd: Any) -> Portals:
    return create_portals(api_client, tmp_path / "portals", sshd)


class Freezer:
    """Make one job's worker hang inside a DB write, at a chosen point, until terminated."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _exec(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql), params)

    def at_phase_event(self, job_id: int, phase: str, status: str) -> None:
        """Hang when the worker records ``phase`` ``status`` (e.g. unzip started)."""
        self.at_event(job_id, "phase", f"NEW.payload->>'phase' = {_lit(phase)} "
                                       f"AND NEW.payload->>'status' = {_lit(status)}")

    def at_event(self, job_id: int, event_type: str, condition: str = "TRUE") -> None:
        """Hang when the worker inserts an ``event_type`` event (``done``: inside the very
        transaction that records the final state)."""
        self._exec(f"""
            CREATE OR REPLACE FUNCTION ketter_test_freeze_event() RETURNS trigger AS $$
            BEGIN
              IF NEW.job_id = {int(job_id)} AND NEW.event_type = {_lit(event_type)}
                 AND {condition} THEN
                PERFORM pg_sleep({FREEZE_S});
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        self._exec("""CREATE TRIGGER ketter_test_freeze_event BEFORE INSERT ON job_events
                      FOR EACH ROW EXECUTE FUNCTION ketter_test_freeze_event()""")

    def at_progress_in(self, job_id: int, phase: str) -> None:
        """Hang at the first progress write while ``phase`` is the job's latest phase
        (the zip exists, part-written, at that moment)."""
        self._exec(f"""
            CREATE OR REPLACE FUNCTION ketter_test_freeze_progress() RETURNS trigger AS $$
            BEGIN
              IF NEW.id = {int(job_id)} AND NEW.progress_bytes > 0 AND (
                   SELECT payload->>'phase' FROM job_events
                   WHERE job_id = NEW.id AND event_type = 'phase'
                   ORDER BY id DESC LIMIT 1) = {_lit(phase)} THEN
                PERFORM pg_sleep({FREEZE_S});
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        self._exec("""CREATE TRIGGER ketter_test_freeze_progress BEFORE UPDATE ON jobs
                      FOR EACH ROW EXECUTE FUNCTION ketter_test_freeze_progress()""")

    def wait_frozen(self, timeout: float = 30) -> None:
        wait_until(lambda: self._frozen_pids(), timeout=timeout, interval=0.05,
                   what="the worker to hang at the freeze point")

    def _frozen_pids(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()")).scalars())

    def release(self) -> None:
        """End the hung backends (their client is dead by now), then drop the triggers:
        DROP TRIGGER waits for the hung write's table lock, so the order matters."""
        with self.engine.connect() as conn:
            for pid in self._frozen_pids():
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        wait_until(lambda: not self._frozen_pids(), timeout=10, what="hung backends to end")
        self._exec("DROP TRIGGER IF EXISTS ketter_test_freeze_event ON job_events")
        self._exec("DROP TRIGGER IF EXISTS ketter_test_freeze_progress ON jobs")
        self._exec("DROP FUNCTION IF EXISTS ketter_test_freeze_event()")
        self._exec("DROP FUNCTION IF EXISTS ketter_test_freeze_progress()")


def _lit(value: str) -> str:
    """A SQL string literal for the few fixed words the tests pass."""
    assert value.isidentifier(), value
    return f"'{value}'"


@pytest.fixture
def freezer(db_engine: Engine, clean_database_url: str) -> Iterator[Freezer]:
    f = Freezer(db_engine)
    try:
        yield f
    finally:
        f.release()


# --------------------------------------------------------------------------- the link


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (sshd sessions call setsid: no common group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Link:
    """A private sshd (the shared session one is never disturbed) that a test can cut:
    the listener and every session it serves die at once, as when a server vanishes;
    ``restore`` starts it again on the same port with the same host key."""

    def __init__(self, server: SshServer) -> None:
        self.server = server

    def cut(self, *, crash: bool = False) -> None:
        """Cut the link: the listener and every ssh session die (SIGKILL); programs the
        sessions ran (rsync, unzip) see their pipes close and exit as they would when
        the network goes away. ``crash=True``: the whole remote side dies at once,
        programs first, as in a server crash or power loss (nothing can clean up)."""
        proc = self.server.process
        assert proc is not None and proc.poll() is None, "sshd not running"
        below = _descendants(proc.pid)
        if crash:
            doomed = [*reversed(below), proc.pid]  # deepest (rsync, unzip) first
        else:
            doomed = [proc.pid, *(p for p in below if _comm(p) == "sshd")]
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        wait_until(lambda: not any(_alive(p) for p in below), timeout=10,
                   what="the remote side's programs to exit")

    def restore(self) -> None:
        config = self.server.workdir / "sshd_config"
        log = self.server.workdir / "sshd.log"
        with log.open("ab") as log_fh:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                    stdout=subprocess.DEVNULL, stderr=log_fh,
                                    start_new_session=True)
        self.server.process = proc
        _wait_for_port(self.server.port, proc, log)

    def close(self) -> None:
        proc = self.server.process
        if proc is not None and proc.poll() is None:
            self.cut()


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    """A dedicated sshd for this test, cut and restored at will."""
    cable = Link(start_sshd(tmp_path / "link_sshd"))
    try:
        yield cable
    finally:
        cable.close()
