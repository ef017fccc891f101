"""``ketter``: drive the Ketter service from a terminal.

    ketter health
    ketter portals add|list|show|edit|rm
    ketter jobs submit|list|show|watch|cancel|events|manifest
    ketter transfer --from A --to B ...      (the engine itself, no service needed)

Reads ``KETTER_API_URL`` and ``KETTER_API_TOKEN`` (or ``--api-url``/``--token``).
Read commands take ``--json`` for scripts. An error is one line on stderr,
``ketter: error: ...``, and exit status 1 (2 for a usage error). ``jobs watch`` and
``jobs submit --watch`` exit 0 when the job is DONE, 1 FAILED, 3 CANCELLED, 130 when
you stop watching with Ctrl-C (the job goes on).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mvp_core.cli import render
from mvp_core.cli.api import ApiError, KetterApi
from mvp_core.cli.watch import finish, watch
from mvp_core.units import human_bytes

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130

app = typer.Typer(name="ketter", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Reliable folder transfers for post-production studios.")
portals_app = typer.Typer(no_args_is_help=True, help="Where files live: local paths, ssh hosts.")
jobs_app = typer.Typer(no_args_is_help=True, help="Copies and moves, and how they went.")
app.add_typer(portals_app, name="portals")
app.add_typer(jobs_app, name="jobs")

out = Console(highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON, for scripts")]


@dataclass
class Context:
    """What every command shares: where the API is, and a client made on first use."""

    api_url: str | None = None
    token: str | None = None
    _api: KetterApi | None = field(default=None, repr=False)

    @property
    def api(self) -> KetterApi:
        if self._api is None:
            url, token = self.api_url, self.token
            if url is None or token is None:
                from mvp_core.config import get_settings  # the edge: read once, here

                try:
                    settings = get_settings()
                except Exception as exc:  # noqa: BLE001 - pydantic's error on a KETTER_* value
                    first = " ".join(str(exc).strip().splitlines()[:3])
                    raise ApiError(f"invalid settings: {first}") from None
                url = url or settings.api_url
                token = token or settings.api_token
            self._api = KetterApi(url, token)
        return self._api


def _ctx(ctx: typer.Context) -> Context:
    return ctx.ensure_object(Context)


def _show(data: Any, as_json: bool, table: Callable[[], Table]) -> None:
    """``--json``: the API's JSON as is; otherwise the table (built only then)."""
    if as_json:
        render.print_json(out, data)
    else:
        out.print(table())


@app.callback()
def _main(
    ctx: typer.Context,
    api_url: Annotated[str | None, typer.Option(
        "--api-url", help="the Ketter API (default: KETTER_API_URL, http://127.0.0.1:8000)",
        show_default=False)] = None,
    token: Annotated[str | None, typer.Option(
        "--token", help="API token (default: KETTER_API_TOKEN)", show_default=False)] = None,
) -> None:
    ctx.obj = Context(api_url=api_url, token=token)


# ------------------------------------------------------------------ health


@app.command()
def health(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Are Postgres, Redis and a worker up? Exit 1 when the service is down."""
    h = _ctx(ctx).api.health()
    if as_json:
        render.print_json(out, h)
    else:
        def ok(part: dict[str, Any]) -> str:
            return "[green]ok[/]" if part["ok"] else f"[red]down[/] ({part.get('error')})"
        out.print(f"status:   {h['status']}")
        out.print(f"database: {ok(h['database'])}")
        out.print(f"redis:    {ok(h['redis'])}")
        alive = [w for w in h["workers"] if w["alive"]]
        out.print(f"workers:  {len(alive)} alive"
                  + "".join(f"\n  {w['id']} (last beat {w['heartbeat_age_s']:.1f} s ago)"
                            for w in h["workers"]))
        counts = h.get("jobs_last_24h") or {}
        if counts:
            out.print("jobs:     " + ", ".join(f"{n} {status}" for status, n in counts.items())
                      + " (ended: last 24 h)")
    if h["status"] == "down":
        raise typer.Exit(EXIT_ERROR)


# ------------------------------------------------------------------ portals


def _portal_id(api: KetterApi, ref: str) -> int:
    """A portal by id or by name."""
    if ref.isdigit():
        return int(ref)
    for p in api.portals():
        if p["name"] == ref:
            return int(p["id"])
    raise ApiError(f"no portal named {ref!r} (ketter portals list)")


def _location(location: str) -> dict[str, Any]:
    """``/path`` (local) or ``[user@]host[:port]:/path`` (ssh) as portal fields."""
    from mvp_core.transfer_engine.endpoints import SshEndpoint, parse_endpoint
    from mvp_core.transfer_engine.errors import InvalidEndpointError

    try:
        endpoint = parse_endpoint(location)
    except InvalidEndpointError as exc:
        raise ApiError(f"location {location!r}: {exc}") from None
    if isinstance(endpoint, SshEndpoint):
        return {"kind": "ssh", "host": endpoint.host, "port": endpoint.port,
                "username": endpoint.user, "base_path": str(endpoint.path)}
    if not location.startswith("/"):
        raise ApiError(f"location {location!r}: a local base path must be absolute")
    return {"kind": "local", "base_path": location}


@portals_app.command("add")
def portals_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="a short name, e.g. lab or srvtrf")],
    location: Annotated[str, typer.Argument(help="/path, or [user@]host[:port]:/path")],
    identity: Annotated[Path | None, typer.Option(
        help="ssh private key file, on the worker host")] = None,
    known_hosts: Annotated[Path | None, typer.Option(
        help="known_hosts file, on the worker host")] = None,
    rsync_path: Annotated[str | None, typer.Option(
        help="the remote rsync, e.g. /opt/homebrew/bin/rsync on a Mac")] = None,
    site: Annotated[str | None, typer.Option(
        help="the site (LAB host, KETTER_WORKER_SITE) whose disk a local path is on")] = None,
    max_jobs: Annotated[int | None, typer.Option(
        help="at most this many jobs on the portal at once")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a portal."""
    body: dict[str, Any] = {"name": name, **_location(location)}
    if site is not None:
        body["site"] = site
    if max_jobs is not None:
        body["max_concurrent_jobs"] = max_jobs
    if identity is not None:
        body["identity_file"] = str(identity)
    if known_hosts is not None:
        body["known_hosts_file"] = str(known_hosts)
    if rsync_path is not None:
        body["rsync_path"] = rsync_path
    portal = _ctx(ctx).api.add_portal(body)
    if as_json:
        render.print_json(out, portal)
        return
    out.print(f"portal {portal['id']} {portal['name']}: {render.portal_location(portal)}")
    for warning in portal.get("warnings") or ():
        out.print(f"[yellow]warning:[/] {warning}")


@portals_app.command("list")
def portals_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List portals."""
    portals = _ctx(ctx).api.portals()
    if as_json:
        render.print_json(out, portals)
    elif not portals:
        out.print("no portals yet: ketter portals add NAME /path")
    else:
        out.print(render.portals_table(portals))


@portals_app.command("show")
def portals_show(ctx: typer.Context, portal: Annotated[str, typer.Argument(help="id or name")],
                 as_json: JsonOpt = False) -> None:
    """Show one portal."""
    api = _ctx(ctx).api
    p = api.portal(_portal_id(api, portal))
    _show(p, as_json, lambda: render.portal_table(p))


@portals_app.command("edit")
def portals_edit(
    ctx: typer.Context,
    portal: Annotated[str, typer.Argument(help="id or name")],
    name: Annotated[str | None, typer.Option(help="new name")] = None,
    location: Annotated[str | None, typer.Option(
        help="new /path or [user@]host[:port]:/path")] = None,
    identity: Annotated[Path | None, typer.Option(help="ssh private key file")] = None,
    known_hosts: Annotated[Path | None, typer.Option(help="known_hosts file")] = None,
    rsync_path: Annotated[str | None, typer.Option(
        help="the remote rsync, e.g. /opt/homebrew/bin/rsync on a Mac")] = None,
    site: Annotated[str | None, typer.Option(help="the site whose disk it is on")] = None,
    max_jobs: Annotated[int | None, typer.Option(
        help="at most this many jobs on the portal at once")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a portal (jobs not started yet use the new values)."""
    api = _ctx(ctx).api
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if location is not None:
        body.update(_location(location))
    if identity is not None:
        body["identity_file"] = str(identity)
    if known_hosts is not None:
        body["known_hosts_file"] = str(known_hosts)
    if rsync_path is not None:
        body["rsync_path"] = rsync_path
    if site is not None:
        body["site"] = site
    if max_jobs is not None:
        body["max_concurrent_jobs"] = max_jobs
    if not body:
        raise ApiError("nothing to change (--name, --location, --identity, --known-hosts, "
                       "--rsync-path, --site, --max-jobs)")
    p = api.edit_portal(_portal_id(api, portal), body)
    if as_json:
        render.print_json(out, p)
        return
    out.print(f"portal {p['id']} {p['name']}: {render.portal_location(p)}")
    for warning in p.get("warnings") or ():
        out.print(f"[yellow]warning:[/] {warning}")


@portals_app.command("rm")
def portals_rm(ctx: typer.Context,
               portal: Annotated[str, typer.Argument(help="id or name")]) -> None:
    """Remove a portal (refused while unfinished jobs use it; ended jobs keep it in
    their history)."""
    api = _ctx(ctx).api
    portal_id = _portal_id(api, portal)
    api.remove_portal(portal_id)
    out.print(f"portal {portal_id} removed")


# ------------------------------------------------------------------ jobs


def _names(api: KetterApi) -> dict[int, str]:
    return {int(p["id"]): p["name"] for p in api.portals()}


def _split(spec: str, what: str) -> tuple[str, str]:
    portal, _, path = spec.partition(":")
    if not portal:
        raise ApiError(f"{what} {spec!r}: expected PORTAL:PATH (a portal name or id)")
    return portal, path


def _follow(api: KetterApi, job_id: int) -> None:
    """Watch a job to its end; exit with its outcome (Ctrl-C stops watching only)."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        job = watch(lambda: api.job(job_id), out)
    except KeyboardInterrupt:
        err.print(f"stopped watching; job {job_id} goes on "
                  f"(ketter jobs watch {job_id} / ketter jobs cancel {job_id})")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(finish(job, out))


@jobs_app.command("submit")
def jobs_submit(
    ctx: typer.Context,
    source: Annotated[str, typer.Option("--from", help="PORTAL:PATH, e.g. lab:Sessions/Mix1")],
    target: Annotated[str, typer.Option("--to", help="PORTAL[:DIR], e.g. srvtrf:deliveries")],
    move: Annotated[bool, typer.Option("--move", help="delete the source once delivered "
                                                      "and verified")] = False,
    strategy: Annotated[str, typer.Option(help="auto, direct or zip_first")] = "auto",
    on_existing: Annotated[str, typer.Option(
        help="when the name exists in the target: fail, replace or merge")] = "fail",
    notify_url: Annotated[str | None, typer.Option(
        help="POST a signed summary here when the job ends")] = None,
    verify: Annotated[str | None, typer.Option(
        help="checksum (every file's content hash on both sides) or size; default: the "
             "service's KETTER_VERIFY")] = None,
    mhl: Annotated[bool, typer.Option(
        "--mhl", help="also write an ASC MHL receipt into <folder>/ascmhl")] = False,
    follow: Annotated[bool, typer.Option("--watch", help="show a live bar until it ends")
                      ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a copy (or --move) of a folder or file into a target directory."""
    api = _ctx(ctx).api
    src_portal, src_path = _split(source, "--from")
    dst_portal, dst_path = _split(target, "--to")
    body: dict[str, Any] = {
        "source_portal_id": _portal_id(api, src_portal), "source_path": src_path,
        "target_portal_id": _portal_id(api, dst_portal), "target_path": dst_path,
        "mode": "move" if move else "copy", "strategy": strategy, "on_existing": on_existing,
    }
    if notify_url:
        body["notify_url"] = notify_url
    if verify:
        body["verify"] = verify
    if mhl:
        body["write_mhl"] = True
    job = api.submit(body)
    if as_json and not follow:
        render.print_json(out, job)
        return
    out.print(f"job {job['id']} submitted ({job['mode']} {source} -> {target})")
    if follow:
        _follow(api, int(job["id"]))


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(
        help="PENDING, RUNNING, DONE, FAILED or CANCELLED")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Recent jobs, newest first."""
    api = _ctx(ctx).api
    jobs = api.jobs(status=status.upper() if status else None, limit=limit)
    if as_json:
        render.print_json(out, jobs)
    elif not jobs:
        out.print("no jobs")
    else:
        out.print(render.jobs_table(jobs, _names(api)))


@jobs_app.command("show")
def jobs_show(ctx: typer.Context, job_id: int, as_json: JsonOpt = False) -> None:
    """One job: where it is, how fast, what went wrong."""
    api = _ctx(ctx).api
    job = api.job(job_id)
    _show(job, as_json, lambda: render.job_table(job, _names(api)))


@jobs_app.command("watch")
def jobs_watch(ctx: typer.Context, job_id: int) -> None:
    """Follow a job to its end with a live bar; exit 0 DONE, 1 FAILED, 3 CANCELLED."""
    _follow(_ctx(ctx).api, job_id)


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: int, as_json: JsonOpt = False) -> None:
    """Cancel a job (a running one stops within a second or two)."""
    job = _ctx(ctx).api.cancel(job_id)
    if as_json:
        render.print_json(out, job)
    elif job["status"] == "CANCELLED":
        out.print(f"job {job_id} CANCELLED")
    else:
        out.print(f"job {job_id}: cancel requested; its worker stops it shortly "
                  f"(ketter jobs watch {job_id})")


@jobs_app.command("events")
def jobs_events(ctx: typer.Context, job_id: int, as_json: JsonOpt = False) -> None:
    """A job's history, oldest first."""
    api = _ctx(ctx).api
    events: list[dict[str, Any]] = []
    after = 0
    while True:  # page through (1000 a page)
        page = api.events(job_id, after_id=after)
        events += page
        if len(page) < 1000:
            break
        after = int(page[-1]["id"])
    _show(events, as_json, lambda: render.events_table(events))


@jobs_app.command("manifest")
def jobs_manifest(
    ctx: typer.Context, job_id: int, as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print CSV, for a spreadsheet")
                      ] = False,
) -> None:
    """The delivery receipt: every delivered file with its size and content hash."""
    api = _ctx(ctx).api
    if as_csv:
        out.file.write(api.manifest(job_id, csv=True))
        out.file.flush()
        return
    manifest = api.manifest(job_id)
    if as_json:
        render.print_json(out, manifest)
        return
    files = manifest.get("files", [])
    total = sum(int(f.get("size") or 0) for f in files)
    out.print(render.manifest_table(manifest))
    out.print(f"{len(files)} files, {human_bytes(total)}, algorithm "
              f"{manifest.get('algorithm', '?')}")


# ------------------------------------------------------------------ the engine


@app.command("transfer", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def transfer(ctx: typer.Context) -> None:
    """Run one transfer here, without the service (the engine CLI: --from A --to B
    [--mode copy|move] [--strategy ...] [--dry-run] ...; --help for all)."""
    from mvp_core.transfer_engine.cli import main as engine_main

    raise typer.Exit(engine_main(list(ctx.args), prog="ketter transfer"))


def main() -> None:
    """Console script entry point: ``ketter``."""
    try:
        app()
    except ApiError as exc:
        print(f"ketter: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print("ketter: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
