"""Job-end notifications: one signed webhook POST per ended job (DONE, FAILED, CANCELLED).

Who: every ``KETTER_WEBHOOK_URL`` and the job's own ``notify_url``. What: a JSON summary
(``payload``), or a Slack-compatible ``{"text": ...}`` with ``KETTER_WEBHOOK_FORMAT=slack``.
Signed: ``X-Ketter-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body bytes with
``KETTER_WEBHOOK_SECRET`` (GitHub's scheme, so receivers have code for it).

Exactly once per job: the notification is claimed in Postgres (``jobs.notified_at``, set
by one conditional UPDATE) before anything is sent. Delivery runs in the background,
never holding up or failing the job; each attempt (2xx, another status, or a network
error) is a ``notify`` event; failed attempts are retried with exponential backoff.
A worker that dies mid-retry loses the rest of that job's attempts (they are in its
events); the job itself is unaffected.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from mvp_core.config import Settings
from mvp_core.db import repository as repo
from mvp_core.db.models import EventLevel, EventType, Job
from mvp_core.units import human_bytes, human_duration, human_speed
from mvp_core.worker.state import WorkerState

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Ketter-Signature"
SHUTDOWN_GRACE_S = 5.0


def payload(job: Job, *, api_url: str) -> dict[str, Any]:
    """The job's end, as a receiver wants it (no secrets: no key paths, no notify_url)."""
    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    source, target = job.source_portal, job.target_portal
    duration = job.duration_s
    if duration is None and job.started_at is not None and job.finished_at is not None:
        duration = round((job.finished_at - job.started_at).total_seconds(), 3)
    return {
        "event": "job.ended",
        "id": job.id,
        "status": job.status.value,
        "mode": job.mode.value,
        "strategy": job.strategy.value if job.strategy else None,
        "source": {"portal_id": source.id, "portal": source.name, "path": job.source_path},
        "target": {"portal_id": target.id, "portal": target.name, "path": job.target_path},
        "n_files": job.n_files,
        "total_bytes": job.total_bytes,
        "files_copied": job.files_copied,
        "bytes_copied": job.bytes_copied,
        "duration_s": duration,
        "attempts": job.attempts,
        "error": ({"type": job.error_type, "message": job.error_message}
                  if job.error_type or job.error_message else None),
        "started_at": when(job.started_at),
        "finished_at": when(job.finished_at),
        "links": {"job": f"{api_url.rstrip('/')}/jobs/{job.id}",
                  "events": f"{api_url.rstrip('/')}/jobs/{job.id}/events",
                  "manifest": f"{api_url.rstrip('/')}/jobs/{job.id}/manifest"},
    }


def slack_body(summary: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body: one line of text."""
    mark = {"DONE": ":white_check_mark:", "FAILED": ":x:", "CANCELLED": ":no_entry_sign:"}
    text = (f"{mark.get(summary['status'], '')} Ketter job {summary['id']} "
            f"{summary['status']}: {summary['source']['portal']}:{summary['source']['path']} "
            f"-> {summary['target']['portal']}:{summary['target']['path'] or '/'}")
    if summary["status"] == "DONE":
        text += f" ({summary['files_copied']} files, {summary['bytes_copied']} bytes"
        if summary["duration_s"] is not None:
            text += f" in {summary['duration_s']:.1f} s"
        text += ")"
    elif summary["error"]:
        text += f" - {summary['error']['message']}"
    return {"text": text.strip()}


def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex>`` of the HMAC-SHA256 of ``body``: what X-Ketter-Signature holds."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def end_line(summary: dict[str, Any]) -> str:
    """The worker's one log line for a job's end: status, reason, size, duration, speed."""
    duration = summary["duration_s"]
    size = summary["bytes_copied"] or summary["total_bytes"]
    speed = size / duration if summary["status"] == "DONE" and duration else None
    error = summary["error"] or {}
    reason = (f"{error.get('type') or 'error'}: {error.get('message') or ''}".strip()
              if error else "ok" if summary["status"] == "DONE" else "cancelled")
    return (f"job {summary['id']} {summary['status']}: {reason[:300]}; "
            f"{summary['files_copied'] or summary['n_files']} files, {human_bytes(size)}, "
            f"{human_duration(duration)}, {human_speed(speed)}, "
            f"{summary['attempts']} attempt(s), {summary['strategy'] or 'no strategy'}")


def _shown(url: str) -> str:
    """A URL as events and logs may show it: scheme, host and port (a Slack URL's path
    is its secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def encode(summary: dict[str, Any], settings: Settings) -> bytes:
    body = slack_body(summary) if settings.webhook_format == "slack" else summary
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()


def _claim(session: Any, job_id: int, settings: Settings
           ) -> tuple[dict[str, Any], tuple[str, ...]] | None:
    urls = settings.webhook_urls()
    job = repo.claim_notification(session, job_id=job_id)
    if job is None:
        return None
    targets = urls + ((job.notify_url,) if job.notify_url and job.notify_url not in urls else ())
    return payload(job, api_url=settings.api_url), targets


async def deliver(state: WorkerState, job_id: int) -> None:
    """Claim this job's notification and send it to every URL (best effort, retried)."""
    settings = state.settings
    try:
        claimed = await state.db(lambda s: _claim(s, job_id, settings))
    except Exception as exc:  # noqa: BLE001 - a notification never breaks the worker
        log.warning("job %s: notification not claimed: %s", job_id, exc)
        return
    if claimed is None:
        return
    summary, urls = claimed
    log.info("%s", end_line(summary))
    if not urls:
        return
    body = encode(summary, settings)
    headers = {"Content-Type": "application/json", "User-Agent": "ketter-webhook/3",
               "X-Ketter-Event": "job.ended", "X-Ketter-Job": str(job_id)}
    if settings.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(body, settings.webhook_secret)
    async with httpx.AsyncClient(timeout=settings.webhook_timeout_s,
                                 follow_redirects=False) as client:
        await asyncio.gather(*(_post_with_retries(state, client, job_id, url, body, headers)
                               for url in urls))


async def _post_with_retries(state: WorkerState, client: httpx.AsyncClient, job_id: int,
                             url: str, body: bytes, headers: dict[str, str]) -> bool:
    settings = state.settings
    shown = _shown(url)
    for attempt in range(1, settings.webhook_attempts + 1):
        try:
            response = await client.post(url, content=body, headers=headers)
            ok, outcome = response.is_success, f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            ok, outcome = False, f"{type(exc).__name__}: {exc}"[:300]
        last = ok or attempt == settings.webhook_attempts
        delay = settings.webhook_backoff_s * 2 ** (attempt - 1)
        message = (f"webhook to {shown}: {outcome} (attempt {attempt} of "
                   f"{settings.webhook_attempts})")
        if not ok:
            message += "; giving up" if last else f"; next try in {delay:.0f}s"
        await _record(state, job_id, message, ok=ok, payload={
            "url": shown, "attempt": attempt, "max_attempts": settings.webhook_attempts,
            "ok": ok, "outcome": outcome})
        if ok:
            return True
        if last:
            log.warning("job %s: %s", job_id, message)
            return False
        await asyncio.sleep(delay)
    return False


async def _record(state: WorkerState, job_id: int, message: str, *, ok: bool,
                  payload: dict[str, Any]) -> None:
    try:
        await state.db(lambda s: repo.add_event(
            s, job_id=job_id, event_type=EventType.NOTIFY, message=message, payload=payload,
            level=EventLevel.INFO if ok else EventLevel.WARNING))
    except Exception as exc:  # noqa: BLE001 - the log still says it
        log.warning("job %s: notify event not recorded (%s): %s", job_id, exc, message)


def notify_later(state: WorkerState, job_id: int) -> None:
    """Start the job's notification in the background; the job does not wait for it."""
    task = asyncio.create_task(deliver(state, job_id), name=f"notify-{job_id}")
    state.notifications.add(task)
    task.add_done_callback(state.notifications.discard)


async def drain(state: WorkerState, timeout: float = SHUTDOWN_GRACE_S) -> None:
    """At shutdown: let notifications in flight finish for a moment, then stop them."""
    pending = set(state.notifications)
    if not pending:
        return
    _done, left = await asyncio.wait(pending, timeout=timeout)
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=1.0)
