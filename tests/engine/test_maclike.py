"""The engine against a macOS-like remote (../shared/maclike): Apple's openrsync (macOS
15+) and rsync 2.6.9 (macOS <= 14) with BSD tools. Every result identical and
content-verified, nothing left in temp or staging on either side."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.execute import execute_plan
from mvp_core.transfer_engine.job import TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from tests.engine.conftest import temp_leftovers
from tests.fixtures.maclike import MacHost
from tests.fixtures.trees import assert_trees_identical, make_hostile_tree, tree_snapshot

import dataclasses


def _opts(o: EngineOptions) -> EngineOptions:
    return dataclasses.replace(o, verify="checksum")


@pytest.mark.parametrize("strategy", list(TransferStrategy))
@pytest.mark.parametrize("mode", list(TransferMode))
def test_push(mac_host: MacHost, tmp_path: Path, engine_options: EngineOptions,
              strategy: TransferStrategy, mode: TransferMode) -> None:
    src = make_hostile_tree(tmp_path / "src", name="-Sessão 'x' $(y)")
    copy = make_hostile_tree(tmp_path / "ref", name="-Sessão 'x' $(y)")
    dest = tmp_path / "dest"
    job = TransferJob(LocalEndpoint(src), mac_host.endpoint(dest), mode, job_id="p")
    result = execute_plan(decide_strategy(job, force=strategy), options=_opts(engine_options))
    assert result.algorithm
    assert_trees_identical(copy, dest / src.name)
    assert (not src.exists()) == (mode is TransferMode.MOVE)
    assert temp_leftovers(engine_options) == []
    assert [p.name for p in dest.iterdir()] == [src.name]
