"""`make bench`: Ketter against rsync, tar and the link's limit in the two-namespace lab.

Runs on the host; everything that crosses the link runs inside the LAB namespace
(``ip netns exec ketter-lab``) and reaches REMOTE's sshd at 10.203.1.2 across the
long link (delay line: rate, queue and RTT per packet) when the RTT is above 0, and
at 10.203.0.2 across the LAN (veth, tbf) at RTT 0.
REMOTE-side storage is a directory of the same filesystem, so the bench cleans a
destination with a local rmtree (the link stays out of it).

Each repeat runs every method once, in turn, so noise from other work on the
machine spreads over all methods; ratios are computed within one run. Results go
to ``--out`` (JSON) and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import bench_data
import bench_stack

MB = 1_000_000
BASELINES = ("rsync", "tar_ssh")  # ways to move a tree over the link; "best baseline" is the faster
LIMITS = ("cp_a", "ssh_cat")      # bounds, not tree transfers: the disk's and the link's


def log(msg: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')}: {msg}", flush=True)


def read_lab_env(lab_dir: Path) -> dict[str, str]:
    env_file = lab_dir / "lab.env"
    if not env_file.exists():
        raise SystemExit(f"bench: {env_file} missing: run infra/lab/netlab.sh up first")
    out = {}
    for line in env_file.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = " ".join(shlex.split(v))  # values are shell-quoted (printf %q)
    return out


@dataclass
class Lab:
    env: dict[str, str]
    rtt_ms: int
    py: str

    @property
    def ns(self) -> list[str]:
        return ["ip", "netns", "exec", self.env["LAB_NS"]]

    @property
    def port(self) -> int:
        return int(self.env["SSH_PORT"])

    @property
    def host(self) -> str:
        """REMOTE across the long link (delay line) when there is an RTT, else across the LAN."""
        return self.env["REMOTE_ADDR_DELAYED"] if self.rtt_ms > 0 else self.env["REMOTE_ADDR"]

    @property
    def user(self) -> str:
        return self.env["REMOTE_USER"]

    def ssh_argv(self) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", self.env["IDENTITY"], "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={self.env['KNOWN_HOSTS']}",
                "-o", "StrictHostKeyChecking=yes"]

    def ssh_spec(self, path: Path) -> str:
        """The engine's endpoint syntax: user@host:port:/path."""
        return f"{self.user}@{self.host}:{self.port}:{path}"


@dataclass
class Sample:
    seconds: float
    details: dict[str, object] = field(default_factory=dict)


def run_checked(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, check=False, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} -> {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def timed(argv: list[str]) -> Sample:
    t0 = time.perf_counter()
    proc = run_checked(argv)
    return Sample(time.perf_counter() - t0, {"stdout_tail": proc.stdout[-1500:]})


# --- methods: each takes (lab, src, dest_dir) and runs one transfer ---------------------

def m_rsync(lab: Lab, src: Path, dest: Path) -> Sample:
    return timed(lab.ns + ["rsync", "-a", "-e", shlex.join(lab.ssh_argv()), str(src),
                           f"{lab.user}@{lab.host}:{shlex.quote(str(dest))}/"])


def m_tar_ssh(lab: Lab, src: Path, dest: Path) -> Sample:
    remote = shlex.join(["tar", "-C", str(dest), "-xf", "-"])
    t0 = time.perf_counter()
    tar = subprocess.Popen(lab.ns + ["tar", "-C", str(src.parent), "-cf", "-", src.name],
                           stdout=subprocess.PIPE)
    ssh = subprocess.run(lab.ns + lab.ssh_argv() + [f"{lab.user}@{lab.host}", remote], check=False,
                         stdin=tar.stdout, capture_output=True, text=True)
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0 or ssh.returncode != 0:
        raise RuntimeError(f"tar|ssh tar failed: {ssh.stderr[-1000:]}")
    return Sample(time.perf_counter() - t0)


def m_cp_a(lab: Lab, src: Path, dest: Path) -> Sample:
    t0 = time.perf_counter()
    run_checked(["cp", "-a", str(src), str(dest) + "/"])
    run_checked(["sync", "-f", str(dest)])
    return Sample(time.perf_counter() - t0)


def ketter_cli(strategy: str, extra_env: dict[str, str] | None = None, *,
               pull: bool = False) -> Callable[[Lab, Path, Path], Sample]:
    """The engine's CLI, run inside LAB (no DB, no Redis); ``extra_env``: KETTER_* knobs.
    ``pull``: the source is read from REMOTE over ssh and written in LAB (issue 18)."""

    def run(lab: Lab, src: Path, dest: Path) -> Sample:
        ends = (["--from", lab.ssh_spec(src), "--to", str(dest)] if pull
                else ["--from", str(src), "--to", lab.ssh_spec(dest)])
        argv = lab.ns + [lab.py, "-m", "mvp_core.transfer_engine.cli", *ends,
                         "--strategy", strategy,
                         "--identity", lab.env["IDENTITY"], "--known-hosts", lab.env["KNOWN_HOSTS"], "--quiet"]
        t0 = time.perf_counter()
        # LAB and REMOTE share one filesystem: their temp dirs MUST differ, or the zip "sent"
        # to REMOTE is the very file built in LAB and rsync skips it (a free send phase).
        env = {**os.environ, "PYTHONPATH": str(REPO),
               "KETTER_TEMP_DIR": str(Path(lab.env["LAB_DIR"]) / "data" / "tmp_lab_cli"),
               "KETTER_REMOTE_TEMP_DIR": str(Path(lab.env["LAB_DIR"]) / "data" / "tmp_remote_cli"),
               **(extra_env or {})}
        proc = subprocess.run(argv, check=False, text=True, capture_output=True, cwd=REPO, env=env)
        secs = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"ketter cli {strategy} -> {proc.returncode}: {proc.stderr[-2000:]}")
        return Sample(secs, _cli_facts(proc.stdout))

    return run


def _cli_facts(text: str) -> dict[str, object]:
    """Strategy and phase timings from the CLI's summary ("strategy: X", "phases: zip 0.21s, ...")."""
    facts: dict[str, object] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("strategy:"):
            facts["strategy"] = line.split()[1]
        elif line.startswith("done:") and " streams" in line:
            facts["streams"] = int(line.rsplit(",", 1)[-1].split()[0])
        elif line.startswith("path:"):  # "path: RTT 101.2 ms, 6 ssh connections, send ..."
            bits = line.replace(",", " ").split()
            facts["rtt_ms"] = float(bits[2])
            facts["connections"] = int(bits[4])
        elif line.startswith("phases:"):
            phases = {}
            for part in line[len("phases:"):].split(","):
                bits = part.split()
                if len(bits) >= 2 and bits[1].endswith("s"):
                    try:
                        phases[bits[0]] = float(bits[1][:-1])
                    except ValueError:
                        pass
            facts["phase_timings"] = phases
    return facts


# --- the loop -----------------------------------------------------------------------------

def method_table(kinds: list[str], stack: bench_stack.Stack | None) -> dict[str, Callable[[Lab, Path, Path], Sample]]:
    table: dict[str, Callable[[Lab, Path, Path], Sample]] = {
        "rsync": m_rsync, "tar_ssh": m_tar_ssh, "cp_a": m_cp_a,
    }
    if "cli" in kinds:
        for s in ("auto", "direct", "zip_first"):
            table[f"ketter_cli_{s}"] = ketter_cli(s)
        # issue 18: the same DIRECT job pulled (REMOTE -> LAB) beside the push.
        table["ketter_cli_pull"] = ketter_cli("direct", pull=True)
        # issue 19: DIRECT as before it (every stream on the job's one ssh connection, no
        # byte ranges), the baseline the long-path work is measured against, same run.
        if os.environ.get("BENCH_ONE_CONNECTION", "1") != "0":
            table["ketter_cli_direct_1conn"] = ketter_cli(
                "direct", {"KETTER_SSH_MAX_CONNECTIONS": "1"})
    if "api" in kinds and stack is not None:
        for s in ("auto", "direct", "zip_first"):
            table[f"ketter_api_{s}"] = stack.method(s)
    # The cost of content verification (issue 14): DIRECT through the engine CLI with
    # verify=checksum (the default) and verify=size, run side by side in every repeat.
    if "cli" in kinds or os.environ.get("BENCH_VERIFY", "1") != "0":
        table["ketter_cli_direct_checksum"] = ketter_cli("direct", {"KETTER_VERIFY": "checksum"})
        table["ketter_cli_direct_size"] = ketter_cli("direct", {"KETTER_VERIFY": "size"})
    # BENCH_STREAMS=1,2,4: DIRECT at each stream count (engine CLI), to choose the default.
    for n in [x for x in os.environ.get("BENCH_STREAMS", "").split(",") if x.strip()]:
        table[f"ketter_cli_direct_streams{int(n)}"] = ketter_cli("direct", {"KETTER_DIRECT_STREAMS": str(int(n))})
    # BENCH_METHODS=rsync,ketter_cli_direct,...: only these (a shorter run).
    only = [m for m in os.environ.get("BENCH_METHODS", "").split(",") if m.strip()]
    return {k: v for k, v in table.items() if k in only} if only else table


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def bench_link(lab: Lab, blob: Path, repeats: int) -> dict[str, object]:
    """`ssh cat > /dev/null` of a 1 GiB file: one ssh stream's ceiling on this link."""
    secs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with open(blob, "rb") as fh:
            run_checked(lab.ns + lab.ssh_argv() + [f"{lab.user}@{lab.host}", "cat > /dev/null"], stdin=fh)
        secs.append(time.perf_counter() - t0)
    size = blob.stat().st_size
    med = statistics.median(secs)
    return {"bytes": size, "seconds": [round(s, 3) for s in secs], "median_s": round(med, 3),
            "mb_per_s": round(size / med / MB, 1)}


def bench_dataset(lab: Lab, ds: bench_data.Dataset, src: Path, dest_base: Path,
                  methods: dict[str, Callable[[Lab, Path, Path], Sample]], repeats: int) -> dict[str, object]:
    want = bench_data.tree_facts(src)
    runs: dict[str, list[dict[str, object]]] = {m: [] for m in methods}
    for rep in range(repeats):
        for name, fn in methods.items():
            dest = dest_base / name
            clean(dest)
            # Start every run with no dirty pages: otherwise a run pays for the previous
            # run's writeback and the order of methods biases the comparison.
            run_checked(["sync"])
            try:
                sample = fn(lab, src, dest)
            except Exception as exc:  # noqa: BLE001  one broken method must not sink the whole bench
                log(f"{ds.name} {name} #{rep + 1}: FAILED {exc}")
                runs[name].append({"error": str(exc)[-1500:]})
                continue
            got = bench_data.tree_facts(dest / src.name)
            ok = got == want
            runs[name].append({"seconds": round(sample.seconds, 3), "complete": ok, **sample.details})
            log(f"{ds.name} {name} #{rep + 1}: {sample.seconds:.2f} s{'' if ok else f' INCOMPLETE {got} != {want}'}")
            # Checked: gone at once, so one copy of the dataset exists at a time (a tmpfs
            # holds the sources, one destination and the zip temp, not six destinations).
            shutil.rmtree(dest, ignore_errors=True)
        clean(dest_base)
    summary: dict[str, object] = {}
    for name, rs in runs.items():
        secs = [r["seconds"] for r in rs if "seconds" in r and r.get("complete")]
        if not secs:
            summary[name] = {"error": next((r.get("error") for r in rs if "error" in r), "incomplete")}
            continue
        med = statistics.median(secs)
        summary[name] = {"median_s": round(med, 3), "min_s": min(secs), "max_s": max(secs),
                         "n": len(secs), "mb_per_s": round(ds.total_bytes / med / MB, 1)}
    best = min((summary[b]["median_s"], b) for b in BASELINES
               if b in summary and "median_s" in summary[b])  # type: ignore[index]
    rsync_s = summary.get("rsync", {}).get("median_s")  # type: ignore[union-attr]
    for name, s in summary.items():
        if "median_s" in s:  # type: ignore[operator]
            s["ratio_to_best_baseline"] = round(s["median_s"] / best[0], 3)  # type: ignore[index]
            if rsync_s:
                s["ratio_to_rsync"] = round(s["median_s"] / rsync_s, 3)  # type: ignore[index]
            facts = _engine_facts(runs[name])
            if facts:
                s["engine"] = facts  # type: ignore[index]
    pull, push = summary.get("ketter_cli_pull", {}), summary.get("ketter_cli_direct", {})
    if "median_s" in pull and "median_s" in push:  # type: ignore[operator]
        pull["ratio_to_push"] = round(pull["median_s"] / push["median_s"], 3)  # type: ignore[index]
    one, direct = summary.get("ketter_cli_direct_1conn", {}), summary.get("ketter_cli_direct", {})
    if "median_s" in one and "median_s" in direct:  # type: ignore[operator]
        direct["ratio_to_one_connection"] = round(direct["median_s"] / one["median_s"], 3)  # type: ignore[index]
    for via in ("api", "cli"):  # issue 7: ZIP_FIRST within 1.15x of DIRECT
        z, d = summary.get(f"ketter_{via}_zip_first", {}), summary.get(f"ketter_{via}_direct", {})
        if "median_s" in z and "median_s" in d:  # type: ignore[operator]
            z["ratio_to_direct"] = round(z["median_s"] / d["median_s"], 3)  # type: ignore[index]
    return {"dataset": ds.__dict__ | {"total_bytes": ds.total_bytes}, "best_baseline": best[1],
            "summary": summary, "runs": runs}


def sweep(lab: Lab, base: Path, dest_root: Path, grid: list[tuple[int, int]], repeats: int) -> list[dict[str, object]]:
    """Ketter forced DIRECT vs forced ZIP_FIRST (and rsync) over a grid of (files, size): where
    does ZIP_FIRST start to pay? The answer is what the planner's thresholds should encode."""
    methods = {"rsync": m_rsync, "ketter_cli_direct": ketter_cli("direct"),
               "ketter_cli_zip_first": ketter_cli("zip_first")}
    out = []
    for n, size in grid:
        ds = bench_data.Dataset(f"SWEEP_{n}x{size}", "Sweep", n, size)
        src = bench_data.build(ds, base)
        res = bench_dataset(lab, ds, src, dest_root / ds.name, methods, repeats)
        summ = res["summary"]
        row: dict[str, object] = {"n_files": n, "file_bytes": size, "total_bytes": n * size}
        for m in methods:
            row[m] = summ[m].get("median_s")  # type: ignore[union-attr]
        if row["ketter_cli_direct"] and row["ketter_cli_zip_first"]:
            row["zip_over_direct"] = round(row["ketter_cli_zip_first"] / row["ketter_cli_direct"], 2)  # type: ignore[operator]
        row["phases_zip_first"] = _phase_note(res["runs"]["ketter_cli_zip_first"])  # type: ignore[index]
        row["phases_direct"] = _phase_note(res["runs"]["ketter_cli_direct"])  # type: ignore[index]
        out.append(row)
        log(f"sweep {n} x {size} B: {row}")
        shutil.rmtree(base / ds.name, ignore_errors=True)
    return out


def parse_grid(text: str) -> list[tuple[int, int]]:
    """"250x4096,1000x65536" -> [(250, 4096), (1000, 65536)]."""
    grid = []
    for item in text.split(","):
        if item.strip():
            n, size = item.lower().split("x")
            grid.append((int(n), int(size)))
    return grid


# BENCH_PROFILE: today's LAN-like lab (0 and 20 ms), the long link of issue 19 (50 and
# 100 ms: a client in another city), or both.
PROFILES = {
    "lan": {"rtts": "0,20", "datasets": "MANY,TINY,FEW"},
    "wan": {"rtts": "50,100", "datasets": "MANY,FEW,BIG"},
    "all": {"rtts": "0,20,50,100", "datasets": "MANY,FEW,BIG"},
}


def bench_series(lab: Lab, ds: bench_data.Dataset, src: Path, dest: Path) -> dict[str, object]:
    """One DIRECT push of ``ds`` with its progress sampled (``series.py``)."""
    clean(dest)
    run_checked(["sync"])
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "KETTER_TEMP_DIR": str(Path(lab.env["LAB_DIR"]) / "data" / "tmp_lab_cli"),
           "KETTER_REMOTE_TEMP_DIR": str(Path(lab.env["LAB_DIR"]) / "data" / "tmp_remote_cli")}
    proc = run_checked(lab.ns + [lab.py, str(HERE / "series.py"), "--from", str(src),
                                 "--to", lab.ssh_spec(dest), "--identity", lab.env["IDENTITY"],
                                 "--known-hosts", lab.env["KNOWN_HOSTS"]], cwd=REPO, env=env)
    shutil.rmtree(dest, ignore_errors=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["dataset"] = ds.name
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    profile = PROFILES[os.environ.get("BENCH_PROFILE", "lan")]
    parser.add_argument("--rtts", default=os.environ.get("BENCH_RTTS", profile["rtts"]))
    parser.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", "3")))
    parser.add_argument("--datasets", default=os.environ.get("BENCH_DATASETS", profile["datasets"]))
    parser.add_argument("--ketter", default=os.environ.get("BENCH_KETTER", "api"),
                        help="comma list of cli,api (api falls back to cli when the stack is absent)")
    parser.add_argument("--lab-dir", type=Path, default=Path(os.environ.get("LAB_DIR", "/var/tmp/ketter-lab")))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "lab_results" / "bench.json")
    parser.add_argument("--skip-planner", action="store_true")
    parser.add_argument("--sweep", default=os.environ.get(
        "BENCH_SWEEP", "300x4096,1200x4096,4800x4096,300x65536,1200x65536,4800x65536,1200x262144,4800x262144"),
        help="files x bytes grid for DIRECT vs ZIP_FIRST at the largest RTT ('' or 0 skips)")
    args = parser.parse_args()

    started = time.time()
    # `make bench` may be stopped with SIGTERM: unwind so the stack's processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lab_env = read_lab_env(args.lab_dir)
    py = str(REPO / ".venv" / "bin" / "python")
    data_base = args.lab_dir / "data" / "lab"
    dest_root = args.lab_dir / "data" / "remote"
    all_ds = {d.name: d for d in bench_data.datasets_from_env(dict(os.environ))}
    chosen = [all_ds[n] for n in args.datasets.split(",") if n]
    log("building datasets: " + ", ".join(f"{d.name} {d.n_files} x {d.file_bytes} B" for d in chosen))
    sources = {d.name: bench_data.build(d, data_base) for d in chosen}
    blob = args.lab_dir / "data" / "link_1GiB.bin"
    link_bytes = int(os.environ.get("BENCH_LINK_BYTES", str(int(1024 ** 3 * float(os.environ.get("BENCH_SCALE", "1"))))))
    if not blob.exists() or blob.stat().st_size != link_bytes:
        bench_data._write_random(blob, link_bytes)

    kinds = args.ketter.split(",")
    stack = None
    if "api" in kinds:
        stack = bench_stack.Stack.try_start(lab_env, args.lab_dir, py, log)
        if stack is None and "cli" not in kinds:
            log("stack not available: falling back to the engine CLI")
            kinds.append("cli")

    report: dict[str, object] = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "load_at_start": os.getloadavg()},
        "lab": {k: lab_env[k] for k in ("LAB_RATE", "LAB_DELAY_MODE")},
        "git_head": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False,
                                   text=True, capture_output=True).stdout.strip(),
        "scale": os.environ.get("BENCH_SCALE", "1"), "repeats": args.repeats, "ketter_via": kinds,
        "storage": os.environ.get("BENCH_STORAGE", "disk"),
        "rtts": {},
    }
    try:
        for rtt in [int(r) for r in args.rtts.split(",") if r]:
            if rtt > 0:
                run_checked(["bash", str(HERE / "netlab.sh"), "rtt", str(rtt)])
            lab = Lab(lab_env, rtt, py)
            if stack is not None:
                stack.set_lab(lab)
            methods = method_table(kinds, stack)
            log(f"RTT {rtt} ms: port {lab.port}; link check")
            entry: dict[str, object] = {"port": lab.port, "link": bench_link(lab, blob, args.repeats)}
            log(f"RTT {rtt} ms: ssh cat {entry['link']}")  # type: ignore[index]
            entry["datasets"] = {}
            for ds in chosen:
                entry["datasets"][ds.name] = bench_dataset(  # type: ignore[index]
                    lab, ds, sources[ds.name], dest_root / ds.name, methods, args.repeats)
            series_ds = next((d for d in chosen if d.name == os.environ.get("BENCH_SERIES", "MANY")), None)
            if series_ds is not None:
                try:
                    entry["series"] = bench_series(lab, series_ds, sources[series_ds.name],
                                                   dest_root / "series")
                    log(f"RTT {rtt} ms: series {series_ds.name}: {entry['series']['seconds']} s, "  # type: ignore[index]
                        f"{entry['series']['connections']} connections, RTT {entry['series']['rtt_ms']} ms")  # type: ignore[index]
                except RuntimeError as exc:
                    entry["series"] = {"error": str(exc)[-1500:]}
            if stack is not None:
                try:
                    one = stack.one_file_overhead(data_base, dest_root / "one", args.repeats + 2)
                except bench_stack.StackError as exc:
                    log(f"RTT {rtt} ms: 1-file jobs FAILED: {exc}")
                    one = {"error": str(exc)}
                ref = []
                for _ in range(args.repeats):
                    clean(dest_root / "one_rsync")
                    ref.append(m_rsync(lab, data_base / "ONE" / "one", dest_root / "one_rsync").seconds)
                one["rsync_same_file_median_s"] = round(statistics.median(ref), 3)
                entry["api_overhead_1file"] = one
                log(f"RTT {rtt} ms: 1-file job {one.get('seconds')} s; plain rsync {one['rsync_same_file_median_s']} s")
            report["rtts"][str(rtt)] = entry  # type: ignore[index]
        if args.sweep not in ("", "0"):
            rtt = max(int(r) for r in args.rtts.split(",") if r)
            if rtt > 0:
                run_checked(["bash", str(HERE / "netlab.sh"), "rtt", str(rtt)])
            report["sweep"] = {"rtt_ms": rtt, "rows": sweep(Lab(lab_env, rtt, py), data_base / "SWEEP",
                                                             dest_root / "SWEEP", parse_grid(args.sweep),
                                                             args.repeats)}
        if not args.skip_planner:
            report["planner_walk"] = planner_walk(args.lab_dir / "data", py)
    finally:
        if stack is not None:
            stack.stop()
        shutil.rmtree(dest_root, ignore_errors=True)
    report["elapsed_s"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    charts: list[Path] = []
    try:
        import charts as chart_mod  # matplotlib: the "lab" extra (bench.sh installs it)

        charts = chart_mod.render(report, args.out.parent / (args.out.stem + "_charts"))
    except ImportError as exc:
        log(f"charts skipped: {exc}")
    md = render_markdown(report, [c.relative_to(args.out.parent) for c in charts])
    args.out.with_suffix(".md").write_text(md)
    print(md)
    log(f"done in {report['elapsed_s']} s: {args.out} and {args.out.with_suffix('.md')}")


def planner_walk(base: Path, py: str) -> dict[str, object]:
    """decide_strategy on a 100,000-file tree, in a fresh interpreter, median of 3 (warm cache)."""
    root = bench_data.build_walk_tree(base)
    code = (
        "import json, statistics, sys, time\n"
        "from pathlib import Path, PurePosixPath\n"
        "from mvp_core.transfer_engine.endpoints import LocalEndpoint, SshEndpoint\n"
        "from mvp_core.transfer_engine.job import TransferJob\n"
        "from mvp_core.transfer_engine.planner import decide_strategy\n"
        "job = TransferJob(LocalEndpoint(Path(sys.argv[1])), SshEndpoint(host='10.203.0.2', path=PurePosixPath('/tmp/x')))\n"
        "decide_strategy(job)\n"
        "ts = []\n"
        "for _ in range(3):\n"
        "    t0 = time.perf_counter(); plan = decide_strategy(job); ts.append(time.perf_counter() - t0)\n"
        "print(json.dumps({'n_files': plan.n_files, 'strategy': plan.strategy.value, 'seconds': [round(t, 3) for t in ts], 'median_s': round(statistics.median(ts), 3)}))\n"
    )
    proc = run_checked([py, "-c", code, str(root)], cwd=REPO)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"planner walk: {out}")
    return out


def render_markdown(report: dict[str, object], charts: list[Path] | None = None) -> str:
    lines = [f"# Bench run {report['started_utc']}", "",
             f"Scale {report['scale']} (1 = issue 9 sizes), median of {report['repeats']}, "
             f"Ketter via {', '.join(report['ketter_via'])}; link {report['lab']['LAB_RATE']}, "  # type: ignore[index]
             f"delay by {report['lab']['LAB_DELAY_MODE']}; data on {report.get('storage', 'disk')}; "  # type: ignore[index]
             "2 CPUs shared with other work. "
             f"Elapsed {report.get('elapsed_s')} s.", ""]
    for rtt, entry in report["rtts"].items():  # type: ignore[union-attr]
        link = entry["link"]
        lines += [f"## RTT {rtt} ms", "",
                  f"Link limit, `ssh cat > /dev/null` of {link['bytes'] / 2**20:.0f} MiB: "
                  f"{link['median_s']} s, {link['mb_per_s']} MB/s.", ""]
        for name, d in entry["datasets"].items():
            ds = d["dataset"]
            lines += [f"### {name}: {ds['n_files']} files x {ds['file_bytes']} B "
                      f"({ds['total_bytes'] / MB:.0f} MB); best baseline: {d['best_baseline']}", "",
                      "| method | median s | MB/s | min-max s | x best baseline | x rsync | notes |",
                      "|---|---|---|---|---|---|---|"]
            for m, s in d["summary"].items():
                if "median_s" not in s:
                    err = " ".join(str(s.get("error")).split())[:160].replace("|", "/")
                    lines.append(f"| {m} | FAILED | | | | | {err} |")
                    continue
                note = _phase_note(d["runs"][m])
                if "ratio_to_direct" in s:
                    note += f"; {s['ratio_to_direct']:.2f}x DIRECT"
                if "ratio_to_push" in s:
                    note += f"; {s['ratio_to_push']:.2f}x the push"
                if "ratio_to_one_connection" in s:
                    note += f"; {s['ratio_to_one_connection']:.2f}x one connection"
                if s.get("engine"):
                    note += "; " + ", ".join(f"{k} {_human_facts(k, v)}" for k, v in s["engine"].items())
                lines.append(f"| {m} | {s['median_s']:.2f} | {s['mb_per_s']} | {s['min_s']:.2f}-{s['max_s']:.2f} "
                             f"| {s['ratio_to_best_baseline']:.2f} | {s.get('ratio_to_rsync', 0):.2f} | {note} |")
            cost = _verify_cost(d["summary"])
            lines += ["", cost, ""] if cost else [""]
        if isinstance(entry.get("series"), dict) and "seconds" in entry["series"]:
            sr = entry["series"]
            rate = sr.get("send_rate_bytes_s")
            lines += [f"Time series ({sr.get('dataset')}, DIRECT push): {sr['seconds']} s, "
                      f"{sr.get('streams')} streams over {sr.get('connections')} connections, "
                      f"RTT measured {sr.get('rtt_ms')} ms, send rate "
                      f"{rate / MB if rate else 0:.1f} MB/s.", ""]
        if "api_overhead_1file" in entry:
            o = entry["api_overhead_1file"]
            lines += [f"API + worker, 1-file (1 KiB) job submit -> DONE: median {o.get('median_s')} s "
                      f"({o.get('seconds')}); plain `rsync -a` of the same file: "
                      f"{o.get('rsync_same_file_median_s')} s", ""]
    for chart in charts or []:
        lines += [f"![{chart.stem}]({chart})", ""]
    if "sweep" in report:
        sw = report["sweep"]
        lines += [f"## DIRECT vs ZIP_FIRST sweep, RTT {sw['rtt_ms']} ms (Ketter CLI, median s)", "",  # type: ignore[index]
                  "| files | bytes each | total MB | rsync | Ketter DIRECT | Ketter ZIP_FIRST | ZIP/DIRECT | ZIP_FIRST phases |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sw["rows"]:  # type: ignore[index]
            lines.append(f"| {r['n_files']} | {r['file_bytes']} | {r['total_bytes'] / MB:.0f} | {r['rsync']} "
                         f"| {r['ketter_cli_direct']} | {r['ketter_cli_zip_first']} | {r.get('zip_over_direct')} "
                         f"| {r['phases_zip_first']} |")
        lines.append("")
    if "planner_walk" in report:
        p = report["planner_walk"]
        lines += ["## Planner walk", "",
                  f"decide_strategy on {p['n_files']} files: median {p['median_s']} s ({p['seconds']}), "
                  f"strategy {p['strategy']}.", ""]
    return "\n".join(lines)


def _verify_cost(summary: dict[str, dict[str, object]]) -> str:
    """DIRECT with content verification against DIRECT with sizes only, same run."""
    checksum = summary.get("ketter_cli_direct_checksum", {}).get("median_s")
    size = summary.get("ketter_cli_direct_size", {}).get("median_s")
    if not isinstance(checksum, (int, float)) or not isinstance(size, (int, float)) or not size:
        return ""
    return (f"Content verification (xxh128 both sides) costs {checksum - size:+.2f} s on DIRECT: "
            f"{checksum:.2f} s with `verify=checksum` vs {size:.2f} s with `verify=size` "
            f"({(checksum / size - 1) * 100:+.1f} %).")


def _human_facts(key: str, value: int) -> str:
    return f"{value / 2**20:.0f} MiB" if key.endswith("_bytes") else str(value)


def _engine_facts(runs: list[dict[str, object]]) -> dict[str, int]:
    """Largest streams / chunks / peak temp bytes seen in the runs' job events (API runs)."""
    out: dict[str, int] = {}
    for r in runs:
        for key in bench_stack.ENGINE_FACTS:
            v = r.get(key)
            if isinstance(v, int):
                out[key] = max(out.get(key, 0), v)
    return out


def _phase_note(runs: list[dict[str, object]]) -> str:
    """Strategy and median per-phase seconds, when the method reported them."""
    strategies = {r.get("strategy") for r in runs if r.get("strategy")}
    phases: dict[str, list[float]] = {}
    for r in runs:
        for k, v in (r.get("phase_timings") or {}).items():  # type: ignore[union-attr]
            if isinstance(v, (int, float)):
                phases.setdefault(k, []).append(float(v))
    parts = [f"strategy {'/'.join(sorted(map(str, strategies)))}"] if strategies else []
    for key in ("streams", "connections", "rtt_ms"):
        seen = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if seen:
            parts.append(f"{key} {statistics.median(seen):g}")
    parts += [f"{k} {statistics.median(v):.2f}" for k, v in phases.items()]
    return ", ".join(parts)


if __name__ == "__main__":
    main()
