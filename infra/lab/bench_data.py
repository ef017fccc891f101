"""Bench datasets in LAB-side storage: MANY (Pro Tools-like session), TINY, FEW.

Sizes follow issue 9 (MANY 2,000 x 1 MiB, TINY 2,000 x 1 KiB, FEW 4 x 512 MiB) and
issue 19 (BIG: one 400 MiB render; never scaled: below two streams' worth, 128 MiB, a
file is not split, so a scaled BIG would measure nothing new).
``BENCH_SCALE`` scales file *sizes* for a quick run, never file counts, so the
planner sees the same counts and makes the same choice as in a full run.
Content is random (zip -0 and rsync cannot shrink it). A dataset is rebuilt
only when its spec changes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True)
class Dataset:
    name: str        # MANY | TINY | FEW | BIG
    root_name: str   # basename of the source directory (what lands under the target)
    n_files: int
    file_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.n_files * self.file_bytes


def datasets_from_env(env: dict[str, str]) -> list[Dataset]:
    """The datasets, scaled by BENCH_SCALE, each overridable by BENCH_<NAME>_FILES/_BYTES."""
    scale = float(env.get("BENCH_SCALE", "1"))

    def ds(name: str, root: str, n: int, size: int, scaled: bool = True) -> Dataset:
        n = int(env.get(f"BENCH_{name}_FILES", n))
        size = int(env.get(f"BENCH_{name}_BYTES", max(1, int(size * scale)) if scaled else size))
        return Dataset(name, root, n, size)

    return [
        ds("MANY", "Session", 2000, MIB),
        ds("TINY", "Tiny", 2000, 1024, scaled=False),
        ds("FEW", "Renders", 4, 512 * MIB),
        ds("BIG", "Render", 1, 400 * MIB, scaled=False),
    ]


def _many_layout(n: int) -> list[str]:
    """Relative paths of a Pro Tools session: a .ptx, Audio Files/ (90%), Fade Files/ (rest)."""
    paths = ["Session.ptx"]
    n_audio = max(0, (n - 1) * 9 // 10)
    paths += [f"Audio Files/Track {i // 8 + 1:02d}_{i % 8 + 1:02d}-{i:04d}.wav" for i in range(n_audio)]
    paths += [f"Fade Files/Fade {i:04d}.wav" for i in range(n - 1 - n_audio)]
    return paths[:n]


def _layout(ds: Dataset) -> list[str]:
    if ds.name == "MANY":
        return _many_layout(ds.n_files)
    if ds.name == "FEW":
        return [f"Mix_v{i + 1}_stems.wav" for i in range(ds.n_files)]
    if ds.name == "BIG":
        return [f"final_{i + 1}.mov" for i in range(ds.n_files)]
    return [f"dir{i // 100:02d}/note_{i:05d}.txt" for i in range(ds.n_files)]


def _write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 8 * MIB)
            fh.write(os.urandom(n))
            left -= n


def build(ds: Dataset, base: Path) -> Path:
    """Create (or reuse) the dataset under BASE/<name>/<root_name>; return the source dir."""
    home = base / ds.name
    src = home / ds.root_name
    spec_file = home / "spec.json"
    spec = asdict(ds)
    if spec_file.exists() and json.loads(spec_file.read_text()) == spec and src.is_dir():
        return src
    shutil.rmtree(home, ignore_errors=True)
    src.mkdir(parents=True)
    for rel in _layout(ds):
        _write_random(src / rel, ds.file_bytes)
    spec_file.write_text(json.dumps(spec))
    return src


def tree_facts(root: Path) -> tuple[int, int]:
    """(files, bytes) under ROOT: the check that a run delivered everything."""
    n = total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            n += 1
            total += os.lstat(os.path.join(dirpath, f)).st_size
    return n, total


def build_walk_tree(base: Path, n_files: int = 100_000) -> Path:
    """A tree of N empty files, 100 per folder, for timing the planner's walk."""
    root = base / f"walk{n_files}" / "Session"
    marker = root.parent / "done"
    if marker.exists():
        return root
    shutil.rmtree(root.parent, ignore_errors=True)
    for i in range(n_files):
        d = root / f"Audio Files {i // 1000:03d}" / f"take{(i // 100) % 10}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"clip_{i:06d}.wav").touch()
    marker.touch()
    return root
