"""Policy v1: both sides of each threshold, and where ZIP_FIRST cannot apply."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from mvp_core.transfer_engine.endpoints import LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.errors import SourceMissingError
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.planner import TransferStrategy, ZipThresholds, decide_strategy

DIRECT, ZIP = TransferStrategy.DIRECT, TransferStrategy.ZIP_FIRST


def _tree(root: Path, n_files: int, size: int) -> Path:
    root.mkdir(parents=True)
    for i in range(n_files):
        sub = root / f"d{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.wav").write_bytes(b"x" * size)
    return root


def _job(src: Path) -> TransferJob:
    return TransferJob(LocalEndpoint(src), LocalEndpoint(src.parent / "out"))


@pytest.mark.parametrize(
    ("n_files", "size", "thresholds", "strategy"),
    [
        (11, 10, ZipThresholds(max_files=10, max_avg_size_bytes=100), ZIP),   # both met
        (10, 10, ZipThresholds(max_files=10, max_avg_size_bytes=100), DIRECT),  # N == threshold
        (11, 100, ZipThresholds(max_files=10, max_avg_size_bytes=100), DIRECT),  # avg == max
        (11, 99, ZipThresholds(max_files=10, max_avg_size_bytes=100), ZIP),  # avg just under
        (9, 1, ZipThresholds(max_files=10, max_avg_size_bytes=100), DIRECT),
        (0, 0, ZipThresholds(max_files=0, max_avg_size_bytes=100), DIRECT),  # empty dir
    ],
)
def test_thresholds(tmp_path: Path, n_files: int, size: int, thresholds: ZipThresholds,
                    strategy: TransferStrategy) -> None:
    plan = decide_strategy(_job(_tree(tmp_path / "s", n_files, size)), thresholds)
    assert plan.strategy is strategy, plan.reason
    assert plan.n_files == n_files
    assert plan.total_bytes == n_files * size
    assert plan.reason


def test_default_thresholds_are_the_lab_calibrated_ones(tmp_path: Path) -> None:
    # 10,000 files (the seed said 1000; docs/lab_report.md measured DIRECT faster) and 4 MiB.
    assert ZipThresholds() == ZipThresholds(max_files=10000, max_avg_size_bytes=4 * 1024 * 1024)
    assert decide_strategy(_job(_tree(tmp_path / "b", 2000, 16))).strategy is DIRECT
    th = ZipThresholds(max_files=1000)
    assert decide_strategy(_job(_tree(tmp_path / "a", 1001, 16)), th).strategy is ZIP


def test_single_file_is_direct(tmp_path: Path) -> None:
    f = tmp_path / "mix.wav"
    f.write_bytes(b"x")
    plan = decide_strategy(_job(f), ZipThresholds(max_files=0), force=ZIP)
    assert plan.strategy is DIRECT and "single file" in plan.reason


def test_symlink_forces_direct_with_reason(tmp_path: Path) -> None:
    src = _tree(tmp_path / "s", 20, 1)
    os.symlink("d0/f0.wav", src / "link.wav")
    th = ZipThresholds(max_files=5)
    for force in (None, ZIP):
        plan = decide_strategy(_job(src), th, force=force)
        assert plan.strategy is DIRECT
        assert "symlink" in plan.reason and "link.wav" in plan.reason


def test_remote_source_is_direct_with_reason() -> None:
    job = TransferJob(SshEndpoint(host="lab", path=PurePosixPath("/s")),
                      LocalEndpoint(Path("/t")))
    for force in (None, ZIP):
        plan = decide_strategy(job, ZipThresholds(max_files=0), force=force)
        assert plan.strategy is DIRECT and "remote" in plan.reason
        assert plan.n_files is None and plan.manifest is None


def test_forcing_either_way(tmp_path: Path) -> None:
    src = _tree(tmp_path / "s", 3, 1)
    assert decide_strategy(_job(src), force=ZIP).strategy is ZIP
    assert decide_strategy(_job(src), ZipThresholds(max_files=0), force=DIRECT).strategy is DIRECT


def test_missing_source_is_typed(tmp_path: Path) -> None:
    with pytest.raises(SourceMissingError):
        decide_strategy(_job(tmp_path / "nope"))


def test_plan_summary_is_json_ready(tmp_path: Path) -> None:
    plan = decide_strategy(_job(_tree(tmp_path / "s", 4, 10)))
    assert plan.summary() == {"strategy": "DIRECT", "n_files": 4, "total_bytes": 40,
                              "avg_size_bytes": 10, "reason": plan.reason}
