"""``ketter jobs watch``: follow a job to its end, as a live bar on a terminal and as
plain periodic lines otherwise (a log file, CI).

The numbers are the API's (``phase``, ``progress_bytes``, ``files_done``,
``speed_bytes_per_s``, ``eta_s``): the bar shows what the service knows, not a guess
of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from mvp_core.cli.render import outcome_line
from mvp_core.units import human_bytes, human_duration, human_speed

FINAL = frozenset({"DONE", "FAILED", "CANCELLED"})
EXIT_CODES = {"DONE": 0, "FAILED": 1, "CANCELLED": 3}
PLAIN_EVERY_S = 5.0


def _stage(job: dict[str, Any]) -> str:
    if job["status"] == "PENDING":
        return "queued" if not job["attempts"] else "waiting to retry"
    return job.get("phase") or ("planning" if job["strategy"] is None else "starting")


def _numbers(job: dict[str, Any]) -> str:
    total = job["total_bytes"]
    text = f"{human_bytes(job['progress_bytes'])} of {human_bytes(total)}"
    files = job.get("files_done")
    if files is not None and job["n_files"]:
        text += f", {files}/{job['n_files']} files"
    elif job["n_files"]:
        text += f", {job['n_files']} files"
    text += f"  {human_speed(job.get('speed_bytes_per_s'))}"
    text += f"  ETA {human_duration(job.get('eta_s'))}"
    return text


def plain_line(job: dict[str, Any]) -> str:
    percent = job.get("progress_percent")
    shown = f"{percent:5.1f}%" if percent is not None else "    -%"
    return f"job {job['id']} {job['status']} {_stage(job)}: {shown} {_numbers(job)}"


def watch(fetch: Callable[[], dict[str, Any]], console: Console, *,
          interval_s: float = 0.5) -> dict[str, Any]:
    """Poll ``fetch`` until the job ends; returns the final job."""
    job = fetch()
    if job["status"] in FINAL:
        return job
    if not console.is_terminal:
        return _watch_plain(fetch, console, job, interval_s)
    columns = (TextColumn("[bold]{task.fields[stage]:<14}"), BarColumn(bar_width=30),
               TaskProgressColumn(), TextColumn("{task.fields[numbers]}"))
    with Progress(*columns, console=console, transient=False,
                  refresh_per_second=4) as bar:
        task = bar.add_task("job", total=100.0, stage=_stage(job), numbers=_numbers(job))
        while job["status"] not in FINAL:
            bar.update(task, completed=job.get("progress_percent") or 0.0,
                       stage=_stage(job), numbers=_numbers(job))
            time.sleep(interval_s)
            job = fetch()
        bar.update(task, completed=job.get("progress_percent") or 0.0,
                   stage=job["status"].lower(), numbers=_numbers(job))
    return job


def _watch_plain(fetch: Callable[[], dict[str, Any]], console: Console, job: dict[str, Any],
                 interval_s: float) -> dict[str, Any]:
    last = 0.0
    while job["status"] not in FINAL:
        now = time.monotonic()
        if now - last >= PLAIN_EVERY_S:
            console.print(plain_line(job), highlight=False, soft_wrap=True)
            last = now
        time.sleep(interval_s)
        job = fetch()
    return job


def finish(job: dict[str, Any], console: Console) -> int:
    """Print the outcome; the exit status a script can test (0 DONE, 1 FAILED,
    3 CANCELLED)."""
    console.print(outcome_line(job), highlight=False, soft_wrap=True)
    return EXIT_CODES.get(job["status"], 1)
