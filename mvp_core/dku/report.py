"""The DKU report: ``dku_<UTC timestamp>.txt`` for people, ``.json`` for machines.

Both are built from the same results and scrubbed of credentials (URL passwords, the API
token, secret values; see ``mvp_core.dku.redact``) before anything is written or printed.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mvp_core.dku.redact import REDACTED, redact
from mvp_core.dku.result import CheckResult, Status
from mvp_core.dku.smoke import SmokeRun

__all__ = ["REDACTED", "Report", "redact", "render", "utc_now", "write_report"]
_NAME_WIDTH = 28


@dataclass
class Report:
    started_at: datetime
    finished_at: datetime
    api_url: str
    database: str
    checks: list[CheckResult]
    smoke: list[SmokeRun] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for c in self.checks if c.status is s) for s in Status}

    @property
    def passed(self) -> bool:
        return self.counts[Status.FAIL.value] == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def versions(self) -> dict[str, str]:
        """Versions the checks found (python, binaries, postgres, redis)."""
        return {c.name: str(c.data["version"]) for c in self.checks if "version" in c.data}

    def summary_line(self) -> str:
        c = self.counts
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"SUMMARY {verdict}: {c['ok']} ok, {c['warn']} warn, {c['fail']} fail"
            f" in {(self.finished_at - self.started_at).total_seconds():.1f}s"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": "ketter-dku",
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_s": round((self.finished_at - self.started_at).total_seconds(), 3),
            "host": {
                "hostname": socket.gethostname(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "pid": os.getpid(),
            },
            "api_url": self.api_url,
            "database": self.database,
            "versions": self.versions(),
            "checks": [c.as_dict() for c in self.checks],
            "smoke": [run.as_dict() for run in self.smoke],
            "summary": {**self.counts, "passed": self.passed},
            "exit_code": self.exit_code,
        }

    def text_lines(self) -> list[str]:
        header = (
            f"Ketter DKU on {socket.gethostname()} at {self.started_at.isoformat()}"
            f" (API {self.api_url}, database {self.database})"
        )
        lines = [header]
        for c in self.checks:
            lines.append(
                f"{c.status.value.upper():<4} {c.name:<{_NAME_WIDTH}} "
                f"{c.duration_s:7.2f}s  {c.detail}"
            )
        lines.append(self.summary_line())
        return lines


def render(report: Report, secrets: tuple[str, ...]) -> tuple[str, str]:
    """(text, json) of the report, secrets removed."""
    text = "\n".join(redact(line, secrets) for line in report.text_lines()) + "\n"
    body = (
        json.dumps(
            redact(report.as_dict(), secrets),
            indent=2,
            sort_keys=False,
            ensure_ascii=False,
            default=str,
        )
        + "\n"
    )
    return text, body


def write_report(report: Report, report_dir: Path, secrets: tuple[str, ...]) -> tuple[Path, Path]:
    """Write both files; a second run in the same second gets a numbered name."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = report.started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    stem, n = f"dku_{stamp}", 1
    while (report_dir / f"{stem}.txt").exists() or (report_dir / f"{stem}.json").exists():
        n += 1
        stem = f"dku_{stamp}_{n}"
    text, body = render(report, secrets)
    txt_path, json_path = report_dir / f"{stem}.txt", report_dir / f"{stem}.json"
    txt_path.write_text(text, encoding="utf-8")
    json_path.write_text(body, encoding="utf-8")
    return txt_path, json_path


def utc_now() -> datetime:
    return datetime.now(UTC)
