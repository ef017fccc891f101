"""How jobs, portals and events read in a terminal: tables, human sizes and durations."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from mvp_core.units import human_bytes, human_duration, human_speed

STATUS_STYLE = {"DONE": "green", "FAILED": "red", "CANCELLED": "yellow", "RUNNING": "cyan",
                "PENDING": "blue"}


def print_json(console: Console, data: Any) -> None:
    """Machine output: plain JSON, no colours, no wrapping."""
    console.file.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    console.file.flush()


def when(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def portal_location(p: dict[str, Any]) -> str:
    if p["kind"] == "ssh":
        user = f"{p['username']}@" if p.get("username") else ""
        port = f":{p['port']}" if p.get("port") else ""
        return f"{user}{p['host']}{port}:{p['base_path']}"
    return str(p["base_path"])


def portals_table(portals: list[dict[str, Any]]) -> Table:
    table = Table("ID", "NAME", "KIND", "LOCATION", "KEY", box=None, header_style="bold")
    for p in portals:
        table.add_row(str(p["id"]), p["name"], p["kind"], portal_location(p),
                      p.get("identity_file") or "-")
    return table


def portal_table(p: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key in ("id", "name", "kind"):
        table.add_row(key, str(p[key]))
    table.add_row("location", portal_location(p))
    for key in ("identity_file", "known_hosts_file", "rsync_path"):
        table.add_row(key, p.get(key) or "-")
    table.add_row("created", when(p.get("created_at")))
    for warning in p.get("warnings") or ():
        table.add_row("[yellow]warning", warning)
    return table


def _where(names: dict[int, str], portal_id: int, path: str) -> str:
    return f"{names.get(portal_id, f'#{portal_id}')}:{path or '/'}"


def progress_text(job: dict[str, Any]) -> str:
    percent = job.get("progress_percent")
    return "-" if percent is None else f"{percent:.0f}%"


def jobs_table(jobs: list[dict[str, Any]], names: dict[int, str]) -> Table:
    table = Table("ID", "STATUS", "MODE", "FROM", "TO", "SIZE", "DONE", "TOOK", "CREATED",
                  box=None, header_style="bold")
    for j in jobs:
        style = STATUS_STYLE.get(j["status"], "")
        table.add_row(
            str(j["id"]), f"[{style}]{j['status']}[/]", j["mode"],
            _where(names, j["source_portal_id"], j["source_path"]),
            _where(names, j["target_portal_id"], j["target_path"]),
            human_bytes(j["total_bytes"]) if j["total_bytes"] else "-",
            progress_text(j), human_duration(j.get("duration_s")) if j.get("duration_s")
            else "-", when(j["created_at"]))
    return table


def job_table(j: dict[str, Any], names: dict[int, str]) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    style = STATUS_STYLE.get(j["status"], "")
    rows: list[tuple[str, str]] = [
        ("id", str(j["id"])),
        ("status", f"[{style}]{j['status']}[/]"
         + (" (cancel requested)" if j["cancel_requested"] and j["status"] == "RUNNING" else "")),
        ("mode", f"{j['mode']}, on existing: {j['on_existing']}"),
        ("verify", str(j.get("verify", "-")) + (", ASC MHL" if j.get("write_mhl") else "")
         + (f" ({j['manifest_algorithm']})" if j.get("manifest_algorithm") else "")),
        ("from", _where(names, j["source_portal_id"], j["source_path"])),
        ("to", _where(names, j["target_portal_id"], j["target_path"])),
        ("strategy", f"{j['strategy'] or '-'} (asked: {j['requested_strategy']})"),
        ("size", f"{j['n_files']} files, {human_bytes(j['total_bytes'])}"),
        ("progress", f"{progress_text(j)} ({human_bytes(j['progress_bytes'])})"),
    ]
    if j["status"] == "RUNNING":
        files = j.get("files_done")
        rows += [("phase", j.get("phase") or "-"),
                 ("files done", "-" if files is None else str(files)),
                 ("speed", human_speed(j.get("speed_bytes_per_s"))),
                 ("eta", human_duration(j.get("eta_s")))]
    if j["status"] == "DONE":
        rows += [("copied", f"{j['files_copied']} files, {human_bytes(j['bytes_copied'])}"),
                 ("speed", human_speed(j.get("throughput_bytes_per_s")))]
    rows += [("attempts", str(j["attempts"])),
             ("created", when(j["created_at"])), ("started", when(j.get("started_at"))),
             ("finished", when(j.get("finished_at"))),
             ("took", human_duration(j.get("duration_s")))]
    if j.get("error_message"):
        rows.append(("[red]error", f"{j.get('error_type') or ''}: {j['error_message']}"))
    for key, value in rows:
        table.add_row(key, value)
    return table


def events_table(events: list[dict[str, Any]]) -> Table:
    table = Table("TIME", "LEVEL", "TYPE", "MESSAGE", box=None, header_style="bold")
    level_style = {"warning": "yellow", "error": "red"}
    for e in events:
        style = level_style.get(e["level"], "")
        table.add_row(when(e["created_at"]), f"[{style}]{e['level']}[/]" if style else e["level"],
                      e["event_type"], e["message"])
    return table


def manifest_table(manifest: dict[str, Any]) -> Table:
    table = Table("PATH", "SIZE", f"HASH ({manifest.get('algorithm', '?')})", box=None,
                  header_style="bold")
    for f in manifest.get("files", ()):
        table.add_row(str(f.get("path")), human_bytes(f.get("size")), str(f.get("hash") or "-"))
    return table


def outcome_line(job: dict[str, Any]) -> str:
    """One line that says how the job ended."""
    status = job["status"]
    if status == "DONE":
        return (f"job {job['id']} DONE: {job['files_copied']} files, "
                f"{human_bytes(job['bytes_copied'])} in {human_duration(job.get('duration_s'))}"
                f" ({human_speed(job.get('throughput_bytes_per_s'))})")
    if status == "FAILED":
        return (f"job {job['id']} FAILED after {job['attempts']} attempt(s): "
                f"{job.get('error_type') or 'error'}: {job.get('error_message') or ''}").strip()
    if status == "CANCELLED":
        return f"job {job['id']} CANCELLED; temp files removed, source untouched"
    return f"job {job['id']} {status}"
