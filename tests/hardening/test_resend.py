"""A transfer run again over what an earlier attempt (or an earlier job) delivered, with
``merge`` or ``replace`` (what a re-send asks for), must still end with the tree
identical, directory mtimes included. (unzip only restores the times of directories it
creates itself; the engine fixes them up since e929b77.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.execute import execute_plan
from mvp_core.transfer_engine.job import OnExisting, TransferJob
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from tests.fixtures.sshd import SshServer
from tests.fixtures.trees import assert_trees_identical, make_session_tree


@pytest.mark.parametrize("on_existing", [OnExisting.MERGE, OnExisting.REPLACE],
                         ids=lambda o: o.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_second_run_over_a_delivered_tree_keeps_it_identical(
        tmp_path: Path, sshd: SshServer, where: str, on_existing: OnExisting) -> None:
    """ZIP_FIRST only: DIRECT (rsync -a) sets directory times itself."""
    strategy = TransferStrategy.ZIP_FIRST
    options = EngineOptions(temp_dir=tmp_path / "ltmp", remote_temp_dir=str(tmp_path / "rtmp"),
                            ssh_connect_timeout_s=5)
    src = make_session_tree(tmp_path / "src", n_audio=4)
    dest = tmp_path / "dest"
    target = sshd.endpoint(dest) if where == "ssh" else LocalEndpoint(dest)
    job = TransferJob(LocalEndpoint(src), target, job_id="resend", on_existing=on_existing)
    for _attempt in range(2):
        execute_plan(decide_strategy(job, force=strategy), options=options)
        assert_trees_identical(src, dest / src.name)
