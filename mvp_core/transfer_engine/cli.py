"""Command line: plan and run one transfer, for operators and tests.

    python -m mvp_core.transfer_engine.cli --from A --to B --mode copy|move
        [--strategy auto|direct|zip_first] [--on-existing fail|replace|merge]
        [--dry-run] [--identity F] [--known-hosts F] [--rsync-path /remote/rsync]

A and B are local paths or ``[user@]host[:port]:/path``; the result is
``B/<basename of A>``, which appears complete or not at all (docs/delivery.md).
The plan and the summary go to stdout, progress to stderr.
Exit status: 0 done, 1 failed, 2 usage error, 75 failed but worth retrying
(transient: connection lost, timeout), 130 interrupted (Ctrl-C, SIGINT), 143 stopped
(SIGTERM). A failure prints exactly one line, ``ketter: error: ...``, and no traceback.

Ctrl-C or SIGTERM stops the transfer but keeps the staging directory
``B/.ketter-<job>/``: through the engine's ``CancelToken.interrupt`` (its children,
rsync, ssh, unzip, each lead their own process group, so the terminal's signal reaches
only us, and the engine stops them). The last lines say what was kept and how to go on
(rerunning the same command resumes: the job id is derived from A and B).
A second Ctrl-C while stopping changes nothing: stopping takes a moment, and a
half-stopped transfer is worse than waiting for it.

This is an edge of the system: ``main`` reads the settings once and passes plain
values down; the engine itself never reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, TaskID, TaskProgressColumn, TextColumn
from rich.progress import Progress as RichProgress

from mvp_core.speed import SpeedMeter
from mvp_core.transfer_engine import remote_sh
from mvp_core.transfer_engine.delivery import staging_root
from mvp_core.transfer_engine.endpoints import (
    Endpoint,
    LocalEndpoint,
    SshEndpoint,
    parse_endpoint,
)
from mvp_core.transfer_engine.errors import (
    TargetExistsError,
    TargetNotWritableError,
    TransferCancelledError,
    TransferError,
)
from mvp_core.transfer_engine.execute import cleanup_job_temp, execute_plan
from mvp_core.transfer_engine.job import OnExisting, TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import (
    TransferPlan,
    TransferStrategy,
    ZipThresholds,
    decide_strategy,
)
from mvp_core.transfer_engine.results import CancelToken, PhaseEvent, Progress, TransferResult
from mvp_core.transfer_engine.ssh import run_remote

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TRANSIENT, EXIT_CANCELLED = 0, 1, 2, 75, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended
_EXIT_FOR_SIGNAL: dict[int, int] = {signal.SIGINT: EXIT_CANCELLED,
                                    signal.SIGTERM: EXIT_TERMINATED}
_FORCE = {"auto": None, "direct": TransferStrategy.DIRECT, "zip_first": TransferStrategy.ZIP_FIRST}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def build_parser(prog: str = "python -m mvp_core.transfer_engine.cli"
                 ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
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
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan, look at the target (reachable? a writable "
                             "directory? the name free?) and say what a real run would do")
    parser.add_argument("--identity", type=Path, help="ssh private key file")
    parser.add_argument("--known-hosts", type=Path, help="known_hosts file for strict checking")
    parser.add_argument("--rsync-path",
                        help="the remote rsync when not the first on the host's PATH "
                             "(e.g. /opt/homebrew/bin/rsync on a Mac; docs/mac_hosts.md)")
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


def describe_result(result: TransferResult, delivered: str | None = None) -> str:
    rate = result.throughput_bytes_per_s / 1e6
    phases = ", ".join(f"{name} {secs:.2f}s" for name, secs in result.phase_timings.items())
    lines = [
        (f"done: {result.files_transferred} files, {human_bytes(result.bytes_transferred)} "
         f"in {result.duration_s:.2f} s ({rate:.1f} MB/s), strategy {result.strategy.value}"
         + (f", {result.streams} streams" if result.streams > 1 else "")),
        f"  phases: {phases}",
    ]
    if result.rtt_s is not None:  # a big job over ssh measured its path (issue 19)
        send = (f", send {result.send_rate_bytes_s / 1e6:.1f} MB/s"
                if result.send_rate_bytes_s else "")
        lines.append(f"  path: RTT {result.rtt_s * 1000:.1f} ms, "
                     f"{result.connections} ssh connections{send}")
    if result.strategy is TransferStrategy.ZIP_FIRST:
        lines.append("  (zip, send and unzip overlap chunk by chunk: their times add up to "
                     "more than the total)")
    if delivered:
        lines.append(f"  delivered: {delivered}")
    lines += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)


_PIPELINE = ("zip", "send", "unzip")  # ZIP_FIRST's stages, run per chunk and overlapping


class ProgressLine:
    """Progress on stderr: a live bar on a terminal (stage, percent, bytes, files, speed,
    ETA, and ZIP_FIRST's chunks per stage), a plain line every few seconds otherwise.

    The bar shows the whole job: ZIP_FIRST's three stages share one bar (a third each),
    since they overlap chunk by chunk. A phase that ends once is one line; one that
    ends per chunk is counted, not printed each time.
    """

    def __init__(self, stream: TextIO, interval_s: float = 0.25) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval_s = interval_s if self.tty else max(interval_s, 2.0)
        self.last = 0.0
        self.lock = threading.Lock()
        self.pipeline = False
        self.total = 0
        self.meter = SpeedMeter()
        self.ended: dict[str, int] = {}
        self.stage = "starting"
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    def start(self, plan: TransferPlan) -> None:
        """Called once the plan is known (the bar's total, ZIP_FIRST or not)."""
        self.pipeline = plan.strategy is TransferStrategy.ZIP_FIRST
        self.total = plan.total_bytes or 0
        if not self.tty:
            return
        console = Console(file=self.stream, highlight=False)
        self._bar = RichProgress(
            TextColumn("  [bold]{task.fields[stage]:<8}"), BarColumn(bar_width=30),
            TaskProgressColumn(), TextColumn("{task.fields[numbers]}"),
            console=console, transient=False, refresh_per_second=4)
        self._task = self._bar.add_task("transfer", total=max(self.total, 1), stage="",
                                        numbers="")
        self._bar.start()

    def _overall(self, p: Progress) -> tuple[int, int]:
        """(done, total) on the job's scale (ZIP_FIRST: three stages in one bar)."""
        total = self.total or p.bytes_total
        fraction = p.bytes_done / p.bytes_total if p.bytes_total > 0 else 0.0
        fraction = min(max(fraction, 0.0), 1.0)
        if self.pipeline and p.phase in _PIPELINE:
            fraction = (_PIPELINE.index(p.phase) + fraction) / len(_PIPELINE)
        return int(total * fraction), total

    def _chunks(self) -> str:
        if not self.pipeline:
            return ""
        counts = " · ".join(f"{name} {self.ended.get(name, 0)}" for name in _PIPELINE)
        return f"  [chunks done: {counts}]"

    def progress(self, progress: Progress) -> None:
        p = progress
        with self.lock:
            now = time.monotonic()
            done, total = self._overall(p)
            speed = self.meter.add(now, done)
            self.stage = p.phase
            finished = done >= total
            if now - self.last < self.interval_s and not finished:
                return
            self.last = now
            eta = (total - done) / speed if speed else None
            files = (f", {p.files_done}/{p.files_total} files"
                     if p.files_done is not None and p.files_total else "")
            numbers = (f"{human_bytes(done)} of {human_bytes(total)}{files}  "
                       f"{human_bytes(speed) + '/s' if speed else '-'}  "
                       f"ETA {_duration(eta)}{self._chunks()}")
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, completed=done, total=max(total, 1),
                                 stage=p.phase, numbers=numbers)
                return
            pct = 100.0 * done / total if total else 100.0
            self.stream.write(f"  {p.phase}: {pct:5.1f}% {numbers}\n")
            self.stream.flush()

    def phase(self, event: PhaseEvent) -> None:
        if event.status in ("started", "skipped"):  # skipped: taken again another way
            return
        with self.lock:
            seen = self.ended.get(event.phase, 0)
            self.ended[event.phase] = seen + 1
            if event.status == "done" and (seen or (self.pipeline and event.phase in _PIPELINE)):
                return  # per chunk: counted in the bar and the summary, not a line each
            took = f" in {event.duration_s:.2f} s" if event.duration_s is not None else ""
            self._say(f"  {event.phase} {event.status}{took}")

    def _say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def end_line(self) -> None:
        """Stop the bar (it stays on screen as it ended) and say what was counted."""
        with self.lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            repeated = {k: v for k, v in self.ended.items() if v > 1 or k in _PIPELINE}
            if self.pipeline and repeated:
                counts = ", ".join(f"{name} {n}" for name, n in repeated.items())
                self.stream.write(f"  chunks done per stage: {counts}\n")
                self.stream.flush()
            self.ended.clear()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    return f"{seconds:.1f} s" if seconds < 10 else (
        f"{whole} s" if whole < 60 else f"{whole // 60} min {whole % 60:02d} s")


def _nearest_dir(path: str) -> str:
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    return path


def check_target(job: TransferJob, options: EngineOptions) -> str:
    """``--dry-run``'s look at the target: reachable, writable, the output name free; and
    what a real run would do. Raises the ``TransferError`` a real run would meet first
    (host unreachable, key refused, not writable, name taken with ``--on-existing fail``)."""
    target, name = job.target, job.source.name
    path, final = str(target.path), _delivered(job)
    if isinstance(target, SshEndpoint):
        result = run_remote(target, ("sh", "-c", remote_sh.LOOK_AT_TARGET, "sh", path,
                                     f"{path}/{name}"),
                            options, what="look at the target", capture_stdout=True)
        facts = result.stdout.decode(errors="replace").split()
        base = next((f[5:] for f in facts if f.startswith("base=")), path)
        lines = [f"  target host: {target.destination} reachable over ssh"]
    else:
        base = _nearest_dir(path)
        facts = [fact for fact, true in (("writable", os.access(base, os.W_OK)),
                                         ("exists", os.path.lexists(f"{path}/{name}"))) if true]
        lines = []
    if "writable" not in facts:
        raise TargetNotWritableError(f"the target directory {base} is not writable")
    if base != path:
        lines.append(f"  target: {path} does not exist yet: a real run creates it")
    else:
        lines.append(f"  target: {path} is a writable directory")
    if "exists" not in facts:
        lines.append(f"  a real run would deliver {final}")
    elif job.on_existing is OnExisting.FAIL:
        raise TargetExistsError(f"{final} already exists: a real run would write nothing "
                                "(--on-existing replace to swap it, merge to write into it)")
    elif job.on_existing is OnExisting.REPLACE:
        lines.append(f"  {final} exists: a real run would swap it for the new tree once "
                     "that is verified")
    else:
        lines.append(f"  {final} exists: a real run would write into it (merge)")
    return "\n".join(lines)


def _delivered(job: TransferJob) -> str:
    """Where the tree is now: ``B/<basename of A>``."""
    target, name = job.target, job.source.name
    if isinstance(target, SshEndpoint):
        return str(dataclasses.replace(target, path=target.path / name))
    return str(target.path / name)


def absolute(endpoint: Endpoint) -> Endpoint:
    """``.`` or ``../x`` typed by an operator becomes a path with a real basename."""
    if isinstance(endpoint, LocalEndpoint):
        return LocalEndpoint(Path(os.path.abspath(endpoint.path)))
    return endpoint


def default_job_id(source: str, target: str) -> str:
    return "cli-" + hashlib.sha256(f"{source}\0{target}".encode()).hexdigest()[:12]


def _with_rsync(endpoint: Endpoint, rsync_path: str | None) -> Endpoint:
    """An ssh endpoint with ``--rsync-path`` (checked like a portal's)."""
    if rsync_path is None or not isinstance(endpoint, SshEndpoint):
        return endpoint
    return dataclasses.replace(endpoint, rsync_path=rsync_path)


def run(args: argparse.Namespace, thresholds: ZipThresholds, options: EngineOptions,
        default_known_hosts: Path | None, out: TextIO, err: TextIO) -> int:
    """Plan, print, execute; translate errors into one line and an exit status."""
    known_hosts = args.known_hosts or default_known_hosts
    line = ProgressLine(err)
    try:
        job = TransferJob(
            source=_with_rsync(absolute(parse_endpoint(
                args.source, identity_file=args.identity, known_hosts_file=known_hosts)),
                args.rsync_path),
            target=_with_rsync(absolute(parse_endpoint(
                args.target, identity_file=args.identity, known_hosts_file=known_hosts)),
                args.rsync_path),
            mode=TransferMode(args.mode),
            job_id=args.job_id or default_job_id(args.source, args.target),
            on_existing=OnExisting(args.on_existing),
        )
        plan = decide_strategy(job, thresholds, force=_FORCE[args.strategy])
        print(describe_plan(plan), file=out, flush=True)
        if args.dry_run:
            print(check_target(job, options), file=out, flush=True)
            return EXIT_OK
        if not args.quiet:
            line.start(plan)
        result = _execute_interruptibly(plan, options, None if args.quiet else line)
    except Interrupted as stop:
        line.end_line()
        print(stopped_message(stop.signum, job, argv_hint=args), file=err)
        return _EXIT_FOR_SIGNAL.get(stop.signum, EXIT_CANCELLED)
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
    print(describe_result(result, delivered=_delivered(job)), file=out, flush=True)
    return EXIT_OK


class Interrupted(Exception):
    """The operator (Ctrl-C) or the system (SIGTERM) stopped the transfer."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

@contextmanager
def _signals_noted(received: list[int]) -> Iterator[None]:
    """While the transfer runs, SIGINT and SIGTERM are noted in ``received`` (the
    main loop acts on them) instead of raising.

    A handler, not ``KeyboardInterrupt``: the exception could land anywhere in the main
    thread (in Python 3.11 even inside ``Thread.join``, which then reports a live thread
    as finished: the old "internal error: KeyError: 'result'").
    """
    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only; nothing to install
        return
    previous = {sig: signal.signal(sig, handler) for sig in _EXIT_FOR_SIGNAL}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _execute_interruptibly(plan: TransferPlan, options: EngineOptions,
                           line: ProgressLine | None) -> TransferResult:
    """Run in a thread; on SIGINT/SIGTERM stop it with ``CancelToken.interrupt`` (staging
    kept for a rerun), then raise ``Interrupted`` (unless it finished first)."""
    cancel = CancelToken()
    received: list[int] = []
    finished = threading.Event()
    result: list[TransferResult] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            result.append(execute_plan(
                plan, options=options, cancel=cancel,
                progress=line.progress if line else None,
                on_phase=line.phase if line else None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            error.append(exc)
        finally:
            finished.set()

    with _signals_noted(received):
        worker = threading.Thread(target=work, name="ketter-transfer", daemon=True)
        worker.start()
        while not finished.wait(0.1):
            if received and not cancel.cancelled:
                cancel.interrupt()  # stop, keep what was staged for a rerun
    worker.join()
    if result:
        return result[0]  # it ended before the signal took effect: the work is done
    if received:
        try:  # temp zips and stream lists (idempotent; staging is not touched)
            cleanup_job_temp(plan.job, options)
        except (TransferError, OSError):
            pass
        raise Interrupted(received[0])
    raise error[0]


def stopped_message(signum: int, job: TransferJob, *, argv_hint: argparse.Namespace) -> str:
    """What an interrupted run leaves and how to go on, in a few lines."""
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    root = staging_root(job)
    lines = [(f"ketter: stopped ({name}): the transfer's processes were stopped; "
              "temp zips removed; the source is untouched.")]
    if isinstance(root, LocalEndpoint):
        kept: bool | None = os.path.lexists(root.path)
    else:
        kept = None  # asking the host would mean a new ssh connection while we stop
    if kept is False:
        lines.append("  nothing was kept in the target: rerunning the same command starts "
                     "over.")
    else:
        where = "kept" if kept else "may remain"
        lines.append(f"  staging directory {where}: {root}")
        lines.append("  rerun the same command to resume from it (same --from and --to"
                     + (", same --job-id" if argv_hint.job_id else "") + ");")
        lines.append(f"  to discard it instead: rm -rf {_shell_path(root)}")
    return "\n".join(lines)


def _shell_path(endpoint: Endpoint) -> str:
    if isinstance(endpoint, SshEndpoint):
        return f"{shlex.quote(str(endpoint.path))} (on {endpoint.host})"
    return shlex.quote(str(endpoint.path))


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point: read the settings once, then plan and run (``prog``: the name the
    help shows, e.g. ``ketter transfer``)."""
    from mvp_core.config import get_settings  # the edge: only here, never in the engine

    parser = build_parser(prog) if prog else build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
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
