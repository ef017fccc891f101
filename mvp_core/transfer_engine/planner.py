"""Policy v1: DIRECT (one rsync) or ZIP_FIRST (one uncompressed zip, sent, unzipped).

ZIP_FIRST is chosen only for a local source directory holding more than
``max_files`` files whose average size is under ``max_avg_size_bytes``; anything
else is DIRECT. Where ZIP_FIRST cannot apply (a remote source, a tree with
symlinks or special files a zip cannot carry faithfully, names that are not
UTF-8), the plan says DIRECT and why. Thresholds come in as a dataclass: the
planner never reads settings or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.manifest import DIR, FILE, Manifest, build_manifest


class TransferStrategy(str, Enum):
    DIRECT = "DIRECT"
    ZIP_FIRST = "ZIP_FIRST"


@dataclass(frozen=True)
class ZipThresholds:
    # Calibrated in the lab (docs/lab_report.md): the seed's 1000 picked the slower strategy.
    max_files: int = 10000
    max_avg_size_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class TransferPlan:
    job: TransferJob
    strategy: TransferStrategy
    n_files: int | None
    total_bytes: int | None
    avg_size_bytes: int | None
    reason: str
    manifest: Manifest | None = None

    def summary(self) -> dict[str, object]:
        """JSON-ready plan facts for a job event (no manifest)."""
        return {
            "strategy": self.strategy.value,
            "n_files": self.n_files,
            "total_bytes": self.total_bytes,
            "avg_size_bytes": self.avg_size_bytes,
            "reason": self.reason,
        }


def zip_blocker(manifest: Manifest) -> str | None:
    """Why a zip could not carry this tree faithfully, or None when it can."""
    for entry in manifest.entries:
        if entry.kind not in (FILE, DIR):
            return f"tree holds a symlink or special file ({entry.rel_path!r})"
        try:
            entry.rel_path.encode("utf-8")
        except UnicodeEncodeError:
            return f"a name is not valid UTF-8 ({entry.rel_path.encode('utf-8', 'replace')!r})"
    return None


def decide_strategy(
    job: TransferJob,
    thresholds: ZipThresholds = ZipThresholds(),
    *,
    force: TransferStrategy | None = None,
) -> TransferPlan:
    """Walk a local source once and apply policy v1 (or honour ``force`` where it can)."""
    if job.source.is_remote:
        if force is TransferStrategy.ZIP_FIRST:
            reason = "zip_first requested but the source is remote: zips are built locally"
        else:
            reason = "source is remote: zips are built locally only"
        return TransferPlan(job, TransferStrategy.DIRECT, None, None, None, reason)

    assert isinstance(job.source, LocalEndpoint)
    from mvp_core.transfer_engine.names import resolve_local  # names imports results → here

    source_path = Path(job.source.path)
    found = resolve_local(source_path.absolute())
    if found != source_path.absolute():  # typed NFC, on disk NFD (``names``)
        job, source_path = replace(job, source=LocalEndpoint(found)), found
    manifest = build_manifest(source_path)
    n_files, total = manifest.n_files, manifest.total_bytes
    avg = total // n_files if n_files else 0

    def plan(strategy: TransferStrategy, reason: str) -> TransferPlan:
        return TransferPlan(job, strategy, n_files, total, avg, reason, manifest)

    if not manifest.is_dir:
        return plan(TransferStrategy.DIRECT, "source is a single file")
    blocker = zip_blocker(manifest)
    if force is TransferStrategy.DIRECT:
        return plan(TransferStrategy.DIRECT, "direct requested")
    if force is TransferStrategy.ZIP_FIRST:
        if blocker:
            return plan(TransferStrategy.DIRECT, f"zip_first requested but {blocker}")
        return plan(TransferStrategy.ZIP_FIRST, "zip_first requested")
    if n_files <= thresholds.max_files:
        return plan(TransferStrategy.DIRECT,
                    f"{n_files} files <= threshold {thresholds.max_files}")
    if avg >= thresholds.max_avg_size_bytes:
        return plan(TransferStrategy.DIRECT,
                    f"average size {avg} B >= threshold {thresholds.max_avg_size_bytes} B")
    if blocker:
        return plan(TransferStrategy.DIRECT, f"many small files but {blocker}")
    return plan(TransferStrategy.ZIP_FIRST,
                f"{n_files} files > {thresholds.max_files} and average {avg} B "
                f"< {thresholds.max_avg_size_bytes} B")
