"""``python -m mvp_core.dku`` / ``make dku``: check this host, run the smoke jobs, report.

Exit 0 when no check failed, 1 otherwise (2 for a usage error). Settings come from ``KETTER_*`` (read once
here); ``--api-url`` and ``--report-dir`` override for tests and odd set-ups.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from mvp_core.dku.checks import BINARIES, host_checks, shown_url
from mvp_core.dku.options import DkuOptions
from mvp_core.dku.portal_smoke import portal_smoke_checks
from mvp_core.dku.portals import portal_checks
from mvp_core.dku.report import Report, render, utc_now, write_report
from mvp_core.dku.result import CheckResult, Status, describe_exception, run_check
from mvp_core.dku.smoke import PORTAL_PREFIX, STRATEGIES, SmokeRun, run_smoke

GROUPS = ("portals", "smoke")
# A failed one of these means the smoke jobs cannot pass: they are not attempted.
SMOKE_NEEDS = ("postgres", "migrations", "redis", "api", "worker")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mvp_core.dku", description=__doc__)
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("docs/dku_reports"),
        help="where dku_<UTC>.txt/.json go (default: docs/dku_reports)",
    )
    parser.add_argument("--api-url", help="API base URL (default: KETTER_API_URL)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(os.environ["KETTER_DKU_WORK_DIR"])
        if os.environ.get("KETTER_DKU_WORK_DIR")
        else None,
        help="where the smoke tree is made; the worker must see it"
        " (default: KETTER_DKU_WORK_DIR or the system temp dir)",
    )
    parser.add_argument(
        "--smoke-timeout",
        type=float,
        default=90.0,
        help="seconds to wait for each smoke job (default 90)",
    )
    parser.add_argument("--skip-smoke", action="store_true", help="checks only, no transfers")
    parser.add_argument(
        "--smoke-portals",
        action="store_true",
        help="also copy the smoke tree to every ssh portal (into <base>/.ketter-dku/<run>/,"
        " removed afterwards): proves the worker can write there",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated check names, e.g. worker or redis,api (groups: {', '.join(GROUPS)})",
    )
    parser.add_argument("--no-report", action="store_true", help="print only, write no files")
    parser.add_argument("--quiet", action="store_true", help="print the summary line only")
    return parser.parse_args(argv)


def build_options(args: argparse.Namespace) -> DkuOptions:
    from mvp_core.config import get_settings  # settings are read at the edge only

    settings = get_settings()
    return DkuOptions(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        api_url=(args.api_url or settings.api_url).rstrip("/"),
        api_token=settings.api_token,
        engine=settings.engine_options(),
        default_known_hosts=settings.default_known_hosts,
        heartbeat_limit_s=settings.heartbeat_grace_s,
        work_dir=args.work_dir,
        smoke_timeout_s=args.smoke_timeout,
    )


def run_all(
    opts: DkuOptions, *, only: set[str] | None, skip_smoke: bool, smoke_portals: bool = False
) -> tuple[list[CheckResult], list[SmokeRun]]:
    """Every selected check in report order; the smoke jobs last."""

    def wanted(name: str) -> bool:
        return only is None or name in only

    results = [run_check(name, check) for name, check in host_checks(opts) if wanted(name)]
    if wanted("portals"):
        results += portal_checks(opts, skip_prefix=PORTAL_PREFIX)
    runs: list[SmokeRun] = []
    if wanted("smoke") and not skip_smoke:
        dead = [r.name for r in results if r.name in SMOKE_NEEDS and r.status is Status.FAIL]
        if dead:
            # The jobs cannot succeed; failing at once beats waiting out their timeouts.
            reason = f"not run: {', '.join(dead)} failed"
            results += [CheckResult(f"smoke_{s}", Status.FAIL, 0.0, reason) for s in STRATEGIES]
            runs = [SmokeRun(s, error=reason) for s in STRATEGIES]
        else:
            extra = partial(portal_smoke_checks, opts) if smoke_portals else None
            smoke_results, runs = run_smoke(opts, extra)
            results += smoke_results
    return results, runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    only = {n.strip() for n in args.only.split(",") if n.strip()} if args.only else None
    known = {"python", "temp_dir", *BINARIES, *SMOKE_NEEDS, *GROUPS}
    if only is not None and (not only or only - known):
        print(f"dku: --only takes names from: {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    started = utc_now()
    secrets: tuple[str, ...] = ()
    try:
        opts = build_options(args)
    except Exception as exc:  # noqa: BLE001 - bad settings are a failed check, not a crash
        results = [
            CheckResult(
                "settings",
                Status.FAIL,
                0.0,
                f"invalid KETTER_* settings: {describe_exception(exc)}",
            )
        ]
        runs: list[SmokeRun] = []
        api_url, database = args.api_url or "?", "?"
    else:
        secrets = opts.secrets()
        results, runs = run_all(
            opts, only=only, skip_smoke=args.skip_smoke, smoke_portals=args.smoke_portals
        )
        api_url, database = opts.api_url, shown_url(opts.database_url)
    report = Report(
        started_at=started,
        finished_at=utc_now(),
        api_url=api_url,
        database=database,
        checks=results,
        smoke=runs,
    )
    text, _ = render(report, secrets)
    if args.quiet:
        print(text.splitlines()[-1])
    else:
        print(text, end="")
    if not args.no_report:
        try:
            txt_path, json_path = write_report(report, args.report_dir, secrets)
        except OSError as exc:
            print(f"dku: cannot write the report in {args.report_dir}: {exc}", file=sys.stderr)
            return 1
        if not args.quiet:
            print(f"report: {txt_path} {json_path}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
