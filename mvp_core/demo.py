"""`make demo`: the engine on a generated Pro Tools-like session, no Postgres or Redis.

Generates "Demo Session" (1,200 .wav files in nested folders, fades, a .ptx, empty
folders) in a temp dir, runs the real CLI three times (auto, then DIRECT and
ZIP_FIRST forced, for comparison), checks every result file by file against the source (content,
paths, mode bits, mtimes), prints the timings and removes everything it made.

    python -m mvp_core.demo [--files N] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRACKS = ("Kick", "Snare", "OH L", "OH R", "Bass DI", "Gtr 1", "Gtr 2", "Keys", "Lead Vox",
          "BV 1", "BV 2", "Room")
BASE_MTIME = 1_700_000_000


def wav_bytes(rng: random.Random, n_frames: int) -> bytes:
    """A valid 48 kHz / 24-bit mono WAV with noise (incompressible, like real audio)."""
    data = rng.randbytes(n_frames * 3)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 48000, 48000 * 3, 3, 24)
    return header + fmt + b"data" + struct.pack("<I", len(data)) + data


def make_session(parent: Path, n_files: int) -> Path:
    """Write the session folder; deterministic, a few seconds for 1,200 files."""
    rng = random.Random(3)
    root = parent / "Demo Session"
    audio = root / "Audio Files"
    for i in range(n_files):
        track = TRACKS[i % len(TRACKS)]
        folder = audio / track / f"Playlist {i // (len(TRACKS) * 25) + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{track}_{i:04d}.wav"
        path.write_bytes(wav_bytes(rng, rng.randint(4_000, 16_000)))
        os.utime(path, (BASE_MTIME + i, BASE_MTIME + i))
    fades = root / "Fade Files"
    fades.mkdir()
    for i in range(60):
        (fades / f"Fade {i:03d}.wav").write_bytes(wav_bytes(rng, 512))
    for empty in ("Bounced Files", "Video Files", "Rendered Files"):
        (root / empty).mkdir()
    backups = root / "Session File Backups"
    backups.mkdir()
    (backups / "Demo Session.bak.001.ptx").write_bytes(rng.randbytes(90_000))
    (root / "Demo Session.ptx").write_bytes(rng.randbytes(120_000))
    (root / "WaveCache.wfm").write_bytes(rng.randbytes(40_000))
    hook = root / "print-stems.sh"
    hook.write_text("#!/bin/sh\necho stems\n")
    hook.chmod(0o755)
    return root


def snapshot(root: Path) -> dict[str, tuple[str, int, int, str]]:
    """rel path -> (kind, mode bits, mtime seconds, sha256) for every file and folder."""
    snap: dict[str, tuple[str, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", stat.S_IMODE(st.st_mode), 0, "")
            else:
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
                snap[rel] = ("file", stat.S_IMODE(st.st_mode), int(st.st_mtime), digest)
    return snap


def run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """Run the real CLI, echo its output, return (exit code, stdout, seconds)."""
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen([sys.executable, "-m", "mvp_core.transfer_engine.cli", *args],
                          stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # echoed as it comes; progress goes to stderr directly
            lines.append(line)
            print(f"    {line}", end="", flush=True)
    return proc.returncode, "".join(lines), time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvp_core.demo")
    parser.add_argument("--files", type=int, default=1200, help="number of .wav files")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ketter-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env.update(KETTER_TEMP_DIR=str(work / "tmp"), KETTER_REMOTE_TEMP_DIR=str(work / "tmp"))
    try:
        print(f"== Ketter demo in {work}")
        t0 = time.monotonic()
        session = make_session(work / "LAB", args.files)
        reference = snapshot(session)
        n_files = sum(1 for v in reference.values() if v[0] == "file")
        size = sum((session / k).stat().st_size for k, v in reference.items() if v[0] == "file")
        print(f"== generated '{session.name}': {n_files} files, {size / 1e6:.1f} MB "
              f"in {time.monotonic() - t0:.1f} s")

        runs = [(strategy, work / f"SRVTRF {strategy}")
                for strategy in ("auto", "direct", "zip_first")]
        timings: dict[str, float] = {}
        for strategy, target in runs:
            print(f"\n== copy with --strategy {strategy}")
            code, out, elapsed = run_cli(
                ["--from", str(session), "--to", str(target), "--mode", "copy",
                 "--strategy", strategy], env)
            if code != 0:
                print(f"demo: the {strategy} run failed (exit {code})", file=sys.stderr)
                return 1
            chosen = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                           if ln.strip().startswith("strategy:")), "?")
            timings[f"{strategy} ({chosen.split()[0]})"] = elapsed
            landed = snapshot(target / session.name)
            if landed != reference:
                diff = sorted(set(landed.items()) ^ set(reference.items()))[:5]
                print(f"demo: result differs from the source: {diff}", file=sys.stderr)
                return 1
            print(f"    verified: {len(landed)} entries identical (content, modes, mtimes)")

        leftovers = list((work / "tmp").glob("*")) if (work / "tmp").exists() else []
        if leftovers:
            print(f"demo: temp files left behind: {leftovers}", file=sys.stderr)
            return 1
        print("\n== summary (wall clock, including the CLI's start-up)")
        for label, secs in timings.items():
            print(f"    {label:<22} {secs:6.2f} s")
        print("    no temp zip left behind; every result identical to the source")
        print("    (auto applies KETTER_ZIP_THRESHOLD_FILES / _AVG_SIZE_BYTES; which strategy\n"
              "     wins on a real link is measured by `make bench`: docs/lab_report.md)")
        return 0
    finally:
        if args.keep:
            print(f"== kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
