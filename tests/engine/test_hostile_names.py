"""One hostile tree, both strategies, local and over ssh: every result identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.execute import execute_plan
from mvp_core.transfer_engine.job import TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from tests.fixtures.sshd import SshServer
from tests.fixtures.trees import (
    HOSTILE_EMPTY_DIRS,
    HOSTILE_FILES,
    assert_trees_identical,
    make_hostile_tree,
    tree_snapshot,
)


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_hostile_tree_both_strategies_give_identical_results(
        tmp_path: Path, sshd: SshServer, engine_options: EngineOptions, where: str) -> None:
    src = make_hostile_tree(tmp_path / "src dir $HOME", name="-hostile 'tree' $(x);`y`")
    reference = tree_snapshot(src)
    results = {}
    for strategy in TransferStrategy:
        dest = tmp_path / f"dest {strategy.value} ; $x"
        target = sshd.endpoint(dest) if where == "ssh" else LocalEndpoint(dest)
        plan = decide_strategy(TransferJob(LocalEndpoint(src), target, job_id=where),
                               force=strategy)
        assert plan.strategy is strategy, plan.reason
        result = execute_plan(plan, options=engine_options)
        assert result.files_transferred == len(HOSTILE_FILES)
        results[strategy] = dest / src.name

    # Each result equals the source, and the two strategies equal each other.
    for landed in results.values():
        assert_trees_identical(src, landed)
    assert_trees_identical(results[TransferStrategy.DIRECT], results[TransferStrategy.ZIP_FIRST])
    for rel in HOSTILE_EMPTY_DIRS:
        assert (results[TransferStrategy.ZIP_FIRST] / rel).is_dir()
    assert tree_snapshot(src) == reference
    # Nothing was interpreted by a shell along the way.
    assert not list(tmp_path.rglob("injected*")) and not list(Path.home().glob("injected*"))


def test_hostile_tree_move_over_ssh_with_zip(tmp_path: Path, sshd: SshServer,
                                             engine_options: EngineOptions) -> None:
    src = make_hostile_tree(tmp_path / "src")
    copy = make_hostile_tree(tmp_path / "reference")
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t"), TransferMode.MOVE)
    execute_plan(decide_strategy(job, force=TransferStrategy.ZIP_FIRST), options=engine_options)
    assert not src.exists()
    assert_trees_identical(copy, tmp_path / "t" / src.name)
