"""Command line: plan and run one transfer, for operators and tests.

    python -m mvp_core.transfer_engine.cli --from A --to B --mode copy|move
        [--strategy auto|direct|zip_first] [--on-existing fail|replace|merge]
        [--dry-run] [--identity F] [--known-hosts F]

A and B are local paths or ``[user@]host[:port]:/path``; the result is
``B/<basename of A>``, which appears complete or not at all (docs/delivery.md).
The plan and the summary go to stdout, progress to stderr.
Exit status: 0 done, 1 failed, 2 usage error, 75 failed but worth retrying
(transient: connection lost, timeout), 130 cancelled (Ctrl-C). A failure prints
exactly one line, ``ketter: error: ...``, and no traceback.

This is an edge of the system: ``main`` reads the settings once and passes plain
values down; the engine itself never reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from mvp_core.transfer_engine.endpoints import Endpoint, LocalEndpoint, parse_endpoint
from mvp_core.transfer_engine.errors import TransferCancelledError, TransferError
from mvp_core.transfer_engine.execute import execute_plan
from mvp_core.transfer_engine.job import OnExisting, TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import (
    TransferPlan,
    TransferStrategy,
    ZipThresholds,
    decide_strategy,
)
from mvp_core.transfer_engine.results import CancelToken, PhaseEvent, Progress, TransferResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TRANSIENT, EXIT_CANCELLED = 0, 1, 2, 75, 130
_FORCE = {"auto": None, "direct": TransferStrategy.DIRECT, "zip_first": TransferStrategy.ZIP_FIRST}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mvp_core.transfer_engine.cli",
        description="Copy or move a folder or file to a target directory (local or ssh).")
    parser.add_argument("--from", dest="source", required=True,
                        help="source: /path or [user@]host[:port]:/path")
    parser.add_argument("--to", dest="target", required=True,
                        help="target directory: /path or [user@]host[:port]:/path")
    parser.add_argument("--mode", choices=[m.value for m in TransferMode], default="copy")
    parser.add_argument("--strategy", choices=sorted(_FORCE), default="auto",
                        help="auto applies policy v1 (default)")
    parser.add_argument("--on-existing", choices=[o.value for o in OnExisting], default="fail",
                        help="when B/<basename of A> exists: fail (default, nothing written), "
                             "replace it once the new tree is verified, or merge into it")
    parser.add_argument("--verify", choices=["checksum", "size"], default=None,
                        help="checksum (default, KETTER_VERIFY): every file's content hash "
                             "compared on both sides; size: names and sizes only")
    parser.add_argument("--mhl", action="store_true", default=None,
                        help="also write an ASC MHL receipt into <folder>/ascmhl "
                             "(default: KETTER_WRITE_MHL)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--identity", type=Path, help="ssh private key file")
    parser.add_argument("--known-hosts", type=Path, help="known_hosts file for strict checking")
    parser.add_argument("--job-id", help="names temp files (default: derived from A and B, "
                                         "so a rerun replaces the previous attempt's zip)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def describe_plan(plan: TransferPlan) -> str:
    job = plan.job
    lines = [f"plan: {job.mode.value} {job.source} -> {job.target}",
             f"  strategy: {plan.strategy.value} ({plan.reason})"]
    if plan.n_files is not None:
        lines.append(f"  source: {plan.n_files} files, {human_bytes(plan.total_bytes or 0)}, "
                     f"average {human_bytes(plan.avg_size_bytes or 0)}")
    return "\n".join(lines)


def describe_result(result: TransferResult) -> str:
    rate = result.throughput_bytes_per_s / 1e6
    phases = ", ".join(f"{name} {secs:.2f}s" for name, secs in result.phase_timings.items())
    lines = [
        (f"done: {result.files_transferred} files, {human_bytes(result.bytes_transferred)} "
         f"in {result.duration_s:.2f} s ({rate:.1f} MB/s), strategy {result.strategy.value}"
         + (f", {result.streams} streams" if result.streams > 1 else "")),
        f"  phases: {phases}",
    ]
    lines += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)


class ProgressLine:
    """A throttled progress line on stderr (rewritten in place on a terminal)."""

    def __init__(self, stream: TextIO, interval_s: float = 0.25) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval_s = interval_s if self.tty else max(interval_s, 2.0)
        self.last = 0.0
        self.shown: tuple[str, int, int | None] | None = None
        self.dirty = False

    def progress(self, progress: Progress) -> None:
        p = progress
        now = time.monotonic()
        key = (p.phase, p.bytes_done, p.files_done)
        finished = p.bytes_done >= p.bytes_total
        if key == self.shown or (now - self.last < self.interval_s and not finished):
            return
        self.last, self.shown = now, key
        pct = 100.0 * p.bytes_done / p.bytes_total if p.bytes_total else 100.0
        files = f", {p.files_done}/{p.files_total} files" if p.files_done is not None else ""
        text = (f"  {p.phase}: {pct:5.1f}% {human_bytes(p.bytes_done)} of "
                f"{human_bytes(p.bytes_total)}{files}")
        if self.tty:
            self.stream.write("\r" + text.ljust(70))
            self.dirty = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def phase(self, event: PhaseEvent) -> None:
        if event.status in ("started", "skipped"):  # skipped: taken again another way
            return
        self.end_line()
        took = f" in {event.duration_s:.2f} s" if event.duration_s is not None else ""
        self.stream.write(f"  {event.phase} {event.status}{took}\n")
        self.stream.flush()

    def end_line(self) -> None:
        if self.dirty:
            self.stream.write("\n")
            self.dirty = False


def absolute(endpoint: Endpoint) -> Endpoint:
    """``.`` or ``../x`` typed by an operator becomes a path with a real basename."""
    if isinstance(endpoint, LocalEndpoint):
        return LocalEndpoint(Path(os.path.abspath(endpoint.path)))
    return endpoint


def default_job_id(source: str, target: str) -> str:
    return "cli-" + hashlib.sha256(f"{source}\0{target}".encode()).hexdigest()[:12]


def run(args: argparse.Namespace, thresholds: ZipThresholds, options: EngineOptions,
        default_known_hosts: Path | None, out: TextIO, err: TextIO) -> int:
    """Plan, print, execute; translate errors into one line and an exit status."""
    known_hosts = args.known_hosts or default_known_hosts
    line = ProgressLine(err)
    try:
        job = TransferJob(
            source=absolute(parse_endpoint(args.source, identity_file=args.identity,
                                           known_hosts_file=known_hosts)),
            target=absolute(parse_endpoint(args.target, identity_file=args.identity,
                                           known_hosts_file=known_hosts)),
            mode=TransferMode(args.mode),
            job_id=args.job_id or default_job_id(args.source, args.target),
            on_existing=OnExisting(args.on_existing),
        )
        plan = decide_strategy(job, thresholds, force=_FORCE[args.strategy])
        print(describe_plan(plan), file=out, flush=True)
        if args.dry_run:
            return EXIT_OK
        result = _execute_interruptibly(plan, options, None if args.quiet else line)
    except TransferCancelledError as exc:
        line.end_line()
        print(f"ketter: error: {exc}", file=err)
        return EXIT_CANCELLED
    except TransferError as exc:
        line.end_line()
        print(f"ketter: error: {exc}", file=err)
        return EXIT_TRANSIENT if exc.transient else EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        line.end_line()
        print(f"ketter: error: internal error: {type(exc).__name__}: {exc}", file=err)
        return EXIT_FAILED
    line.end_line()
    print(describe_result(result), file=out, flush=True)
    return EXIT_OK


def _execute_interruptibly(plan: TransferPlan, options: EngineOptions,
                           line: ProgressLine | None) -> TransferResult:
    """Run in a thread so Ctrl-C cancels cleanly (children killed, temp zips removed)."""
    cancel = CancelToken()
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            outcome["result"] = execute_plan(
                plan, options=options, cancel=cancel,
                progress=line.progress if line else None,
                on_phase=line.phase if line else None)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="ketter-transfer")
    worker.start()
    while worker.is_alive():
        try:
            worker.join(timeout=0.2)
        except KeyboardInterrupt:
            cancel.cancel()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: read the settings once, then plan and run."""
    from mvp_core.config import get_settings  # the edge: only here, never in the engine

    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except Exception as exc:  # noqa: BLE001 - pydantic ValidationError on a bad KETTER_* value
        first = str(exc).strip().splitlines()
        print(f"ketter: error: invalid settings: {' '.join(first[:3])}", file=sys.stderr)
        return EXIT_USAGE
    # One job per process: nothing would reuse a kept connection.
    options = dataclasses.replace(settings.engine_options(), ssh_persist_s=0.0,
                                  verify=args.verify or settings.verify,
                                  write_mhl=bool(args.mhl) or settings.write_mhl)
    return run(args, settings.zip_thresholds(), options,
               settings.default_known_hosts, sys.stdout, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
