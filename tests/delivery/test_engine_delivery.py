"""Atomic delivery through the real engine: rsync, zip/unzip, ssh to a real sshd.

The final name ``TARGET/<name>`` is absent while a job runs and complete after it;
an existing one is refused before any byte moves unless the job says replace or
merge; a killed job leaves nothing under the final name and its retry resumes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mvp_core.transfer_engine.delivery import DELIVERED_MARK, OLD_TREE, staging_name
from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.errors import (
    InvalidEndpointError,
    TargetExistsError,
    VerificationError,
)
from mvp_core.transfer_engine.execute import (
    discard_job_staging,
    execute_plan,
    remove_staging_root,
)
from mvp_core.transfer_engine.job import OnExisting, TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from mvp_core.transfer_engine.results import PhaseEvent, Progress
from tests.delivery.conftest import entries, target_for, temp_leftovers
from tests.fixtures.sshd import SshServer
from tests.fixtures.trees import assert_trees_identical, make_session_tree, tree_snapshot

STRATEGIES = [TransferStrategy.DIRECT, TransferStrategy.ZIP_FIRST]
WHERE = ["local", "ssh"]
ROOT = Path(__file__).resolve().parents[2]


def _old_tree(final: Path) -> dict[str, tuple[str, int, int, str]]:
    """An editor's earlier delivery under the final name."""
    (final / "Audio Files").mkdir(parents=True)
    (final / "Audio Files" / "old take.wav").write_bytes(b"RIFF old take")
    (final / "Test Session.ptx").write_bytes(b"yesterday's session")
    return tree_snapshot(final)


def _run(job: TransferJob, strategy: TransferStrategy, options: EngineOptions,
         **kwargs: object):  # type: ignore[no-untyped-def]
    return execute_plan(decide_strategy(job, force=strategy), options=options,
                        **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", WHERE)
def test_final_name_absent_until_complete(tmp_path: Path, sshd: SshServer,
                                          options: EngineOptions, strategy: TransferStrategy,
                                          where: str) -> None:
    """Seen from every phase event and progress report: absent, then complete."""
    src = make_session_tree(tmp_path / "src", n_audio=6)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    final, staged = out / src.name, out / ".ketter-job-7" / src.name
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), TransferMode.MOVE,
                      job_id="ketter-job-7")
    seen: list[tuple[str, str, bool, bool]] = []
    during: list[bool] = []

    def on_phase(e: PhaseEvent) -> None:
        seen.append((e.phase, e.status, final.exists(), staged.exists()))

    def progress(_p: Progress) -> None:
        during.append(final.exists())

    _run(job, strategy, options, on_phase=on_phase, progress=progress)
    delivered_at = seen.index(("deliver", "done", True, False))
    assert not any(s[2] for s in seen[:delivered_at]), seen
    assert all(s[2] for s in seen[delivered_at:]), seen
    assert ("verify", "done", False, True) in seen  # verified in staging, before the rename
    assert during and not any(during)
    assert tree_snapshot(final) == reference
    assert entries(out) == [src.name]  # staging dir gone
    assert not src.exists()  # the move deleted its source, after the rename
    assert [s[0] for s in seen if s[1] == "done"][-3:] == ["deliver", "flush", "delete_source"]
    assert temp_leftovers(options) == []


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_final_name_absent_while_a_slow_transfer_runs(tmp_path: Path, sshd: SshServer,
                                                      options: EngineOptions,
                                                      strategy: TransferStrategy) -> None:
    """Polled from outside during a throttled transfer to the ssh host."""
    src = make_session_tree(tmp_path / "src", n_audio=8, audio_size=192 * 1024)
    out = tmp_path / "out"
    final = out / src.name
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), job_id="slow")
    polls: list[tuple[bool, bool]] = []
    delivering = threading.Event()

    def poll() -> None:
        while not delivering.is_set():
            polls.append((final.exists(), (out / ".ketter-slow").exists()))
            time.sleep(0.02)

    def on_phase(e: PhaseEvent) -> None:
        if e.phase == "deliver":
            delivering.set()  # from here on the final name may appear

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        _run(job, strategy, dataclasses.replace(options, bwlimit_kib_s=1024),
             on_phase=on_phase)
    finally:
        delivering.set()
        poller.join()
    assert len(polls) > 20, "the transfer should have lasted a while"
    assert not any(f for f, _s in polls), "the final name appeared before the rename"
    assert any(s for _f, s in polls), "the staging dir should have been seen"
    assert_trees_identical(src, final)
    assert entries(out) == [src.name]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", WHERE)
def test_a_copy_leaves_only_the_final_name(tmp_path: Path, sshd: SshServer,
                                           options: EngineOptions, strategy: TransferStrategy,
                                           where: str) -> None:
    """A copy's marker and rename (one round trip over ssh), then the staging root's
    removal, leave the target holding the delivered tree and nothing else; the source
    is untouched."""
    src = make_session_tree(tmp_path / "src", n_audio=5)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), TransferMode.COPY,
                      job_id="copy-once")
    result = _run(job, strategy, options)
    assert entries(out) == [src.name]
    assert tree_snapshot(out / src.name) == reference == tree_snapshot(src)
    assert result.files_transferred == len([v for v in reference.values() if v[0] == "f"])
    assert temp_leftovers(options) == []


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", WHERE)
def test_existing_target_refused_before_any_byte(tmp_path: Path, sshd: SshServer,
                                                 options: EngineOptions,
                                                 strategy: TransferStrategy, where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=4)
    source_before = tree_snapshot(src)
    out = tmp_path / "out"
    old = _old_tree(out / src.name)
    out_before = tree_snapshot(out)
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), TransferMode.MOVE)
    events: list[PhaseEvent] = []
    with pytest.raises(TargetExistsError, match="already exists; nothing was written") as info:
        _run(job, strategy, options, on_phase=events.append)
    assert not info.value.transient
    assert info.value.as_dict()["code"] == "target_exists"
    if strategy is TransferStrategy.DIRECT and where == "ssh":
        # A small job over ssh sends behind the guard, which refused before rsync ran.
        assert [(e.phase, e.status, e.details.get("guarded"), e.details.get("error"))
                for e in events] == [("send", "started", True, None),
                                     ("send", "skipped", True, None)]
    else:
        assert events == []  # no phase started: nothing zipped, sent or unzipped
    assert tree_snapshot(out / src.name) == old
    assert tree_snapshot(out) == out_before  # no staging dir either
    assert tree_snapshot(src) == source_before
    assert not [p for p in temp_leftovers(options) if p.is_file()]


def test_guarded_send_resumes_what_an_earlier_attempt_staged(
        tmp_path: Path, sshd: SshServer, options: EngineOptions) -> None:
    """A small DIRECT job over ssh sends behind the guard (no separate look at the
    target): the guard lets a retry through when only its own staging tree is there,
    and rsync resumes it, dropping what the source lacks."""
    src = make_session_tree(tmp_path / "src", n_audio=4)
    out = tmp_path / "out"
    staged = out / staging_name("again") / src.name
    (staged / "Audio Files").mkdir(parents=True)
    (staged / "Audio Files" / "stray from a killed rsync.tmp").write_bytes(b"half")
    first = min(src.rglob("*.wav"))
    (staged / first.relative_to(src)).write_bytes(first.read_bytes()[:100])
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), job_id="again")
    events: list[PhaseEvent] = []
    _run(job, TransferStrategy.DIRECT, options, on_phase=events.append)
    sends = [(e.status, e.details.get("guarded")) for e in events if e.phase == "send"]
    assert sends == [("started", True), ("done", True)]
    assert_trees_identical(src, out / src.name)
    assert entries(out) == [src.name]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", WHERE)
def test_replace_swaps_only_after_the_new_tree_is_verified(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, strategy: TransferStrategy,
        where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=5)
    out = tmp_path / "out"
    final = out / src.name
    old = _old_tree(final)
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd),
                      on_existing=OnExisting.REPLACE, job_id="swap")
    old_until_verified: list[bool] = []

    def on_phase(e: PhaseEvent) -> None:
        if e.phase == "verify" and e.status == "done":
            old_until_verified.append(tree_snapshot(final) == old)

    _run(job, strategy, options, on_phase=on_phase)
    assert old_until_verified == [True]
    assert_trees_identical(src, final)  # the old tree's extra files are gone
    assert entries(out) == [src.name]  # old tree deleted, staging gone


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_replace_that_fails_verification_keeps_the_old_tree(
        tmp_path: Path, sshd: SshServer, options: EngineOptions,
        strategy: TransferStrategy) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=5)
    out = tmp_path / "out"
    final = out / src.name
    old = _old_tree(final)
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), TransferMode.MOVE,
                      on_existing=OnExisting.REPLACE, job_id="bad")
    staged = out / staging_name("bad") / src.name / "Audio Files" / "Kick_0001.wav"
    last_write = "send" if strategy is TransferStrategy.DIRECT else "unzip"

    def damage(e: PhaseEvent) -> None:
        if e.phase == last_write and e.status == "done":
            staged.write_bytes(b"short")

    with pytest.raises(VerificationError, match="Kick_0001.wav"):
        _run(job, strategy, options, on_phase=damage)
    assert tree_snapshot(final) == old
    assert entries(out) == [src.name]
    assert src.exists()


def test_a_replace_cut_between_its_renames_puts_the_old_tree_back(
        tmp_path: Path, sshd: SshServer, options: EngineOptions) -> None:
    """The crash window of replace: old tree aside, new one not yet in place."""
    src = make_session_tree(tmp_path / "src", n_audio=3)
    out = tmp_path / "out"
    root = out / staging_name("cut")
    old = _old_tree(root / OLD_TREE)
    (root / src.name).mkdir()
    (root / src.name / "half.wav").write_bytes(b"half")
    (root / DELIVERED_MARK).write_bytes(b"")
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out),
                      on_existing=OnExisting.REPLACE, job_id="cut")
    assert discard_job_staging(job, options) is True
    assert tree_snapshot(out / src.name) == old
    assert entries(out) == [src.name]
    assert discard_job_staging(job, options) is False  # idempotent

    # The same state met by a retry: old back first, then swapped for the new tree.
    shutil.move(out / src.name, root / OLD_TREE)
    (root / src.name).mkdir()
    (root / src.name / "half.wav").write_bytes(b"half")
    _run(job, TransferStrategy.DIRECT, options)
    assert_trees_identical(src, out / src.name)
    assert entries(out) == [src.name]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", WHERE)
def test_merge_writes_into_the_existing_tree(tmp_path: Path, sshd: SshServer,
                                             options: EngineOptions,
                                             strategy: TransferStrategy, where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=5)
    out = tmp_path / "out"
    final = out / src.name
    _old_tree(final)
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd),
                      on_existing=OnExisting.MERGE)
    events: list[PhaseEvent] = []
    _run(job, strategy, options, on_phase=events.append)
    merged = tree_snapshot(final)
    assert (final / "Audio Files" / "old take.wav").read_bytes() == b"RIFF old take"
    del merged["Audio Files/old take.wav"]
    assert merged == tree_snapshot(src)  # every source file, the newer session file included
    assert "deliver" not in [e.phase for e in events]  # written in place: no rename
    assert [e.details.get("where") for e in events if e.phase == "verify"] == ["target"] * 2
    assert entries(out) == [src.name]


def test_a_source_named_like_a_staging_dir_is_refused(tmp_path: Path,
                                                      options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", ".ketter-job-5", n_audio=1)
    with pytest.raises(InvalidEndpointError, match="reserved"):
        _run(TransferJob(LocalEndpoint(src), LocalEndpoint(tmp_path / "out")),
             TransferStrategy.DIRECT, options)


_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path, PurePosixPath
    sys.path.insert(0, {root!r})
    from mvp_core.transfer_engine.endpoints import LocalEndpoint, SshEndpoint
    from mvp_core.transfer_engine.execute import execute_plan
    from mvp_core.transfer_engine.job import TransferJob, TransferMode
    from mvp_core.transfer_engine.options import EngineOptions
    from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
    target = SshEndpoint(host={host!r}, port={port}, user={user!r}, path=PurePosixPath({out!r}),
                         identity_file=Path({key!r}), known_hosts_file=Path({kh!r}))
    job = TransferJob(LocalEndpoint(Path({src!r})), target, TransferMode.MOVE, job_id="crash")
    strike = {strike!r}

    def on_phase(e):
        if (e.phase, e.status) == strike:
            os.kill(os.getpid(), signal.SIGKILL)

    def progress(p):
        if strike == ("send", "bytes") and p.phase == "send" and p.bytes_done > 0:
            os.kill(os.getpid(), signal.SIGKILL)

    execute_plan(decide_strategy(job, force=TransferStrategy[{strategy!r}]),
                 options=EngineOptions(temp_dir=Path({ltmp!r}), remote_temp_dir={rtmp!r},
                                       bwlimit_kib_s=512),
                 on_phase=on_phase, progress=progress)
""")


def _killed_child(tmp_path: Path, sshd: SshServer, options: EngineOptions, src: Path,
                  out: Path, strategy: TransferStrategy, strike: tuple[str, str]) -> None:
    program = _CHILD.format(
        root=str(ROOT), host=sshd.host, port=sshd.port, user=sshd.user, out=str(out),
        key=str(sshd.identity_file), kh=str(sshd.known_hosts_file), src=str(src),
        strike=strike, strategy=strategy.name, ltmp=str(options.temp_dir),
        rtmp=options.remote_temp_dir)
    proc = subprocess.run([sys.executable, "-c", program], timeout=60, check=False,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_a_job_killed_mid_transfer_leaves_nothing_under_the_final_name(
        tmp_path: Path, sshd: SshServer, options: EngineOptions,
        strategy: TransferStrategy) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=6, audio_size=128 * 1024)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    _killed_child(tmp_path, sshd, options, src, out, strategy, ("send", "bytes"))
    assert entries(out) == [staging_name("crash")]  # only the hidden staging dir
    assert tree_snapshot(src) == reference  # a killed move deleted nothing

    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), TransferMode.MOVE, job_id="crash")
    _run(job, strategy, options)  # the retry of the same job
    assert tree_snapshot(out / src.name) == reference
    assert entries(out) == [src.name]
    assert not src.exists()


def test_a_job_killed_during_unzip_leaves_nothing_under_the_final_name(
        tmp_path: Path, sshd: SshServer, options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=6, audio_size=64 * 1024)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    _killed_child(tmp_path, sshd, options, src, out, TransferStrategy.ZIP_FIRST,
                  ("unzip", "started"))
    assert entries(out) == [staging_name("crash")]
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), TransferMode.MOVE, job_id="crash")
    _run(job, TransferStrategy.ZIP_FIRST, options)
    assert tree_snapshot(out / src.name) == reference  # directory mtimes included
    assert entries(out) == [src.name]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_a_retry_after_the_rename_verifies_and_finishes_without_resending(
        tmp_path: Path, sshd: SshServer, options: EngineOptions,
        strategy: TransferStrategy) -> None:
    """Killed right after the rename (DONE never recorded): the retry finds its own
    delivery, verifies it, deletes the move's source, and sends nothing again."""
    src = make_session_tree(tmp_path / "src", n_audio=4, audio_size=16 * 1024)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    _killed_child(tmp_path, sshd, options, src, out, strategy, ("deliver", "done"))
    assert tree_snapshot(out / src.name) == reference
    assert tree_snapshot(src) == reference
    assert sorted(os.listdir(out / staging_name("crash"))) == [DELIVERED_MARK]

    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), TransferMode.MOVE, job_id="crash")
    events: list[PhaseEvent] = []
    result = _run(job, strategy, options, on_phase=events.append)
    assert [e.phase for e in events if e.status == "done"] == ["verify", "flush", "delete_source"]
    assert [e.details["resumed"] for e in events if e.phase == "verify"] == [True, True]
    assert result.files_transferred == sum(1 for p in (out / src.name).rglob("*") if p.is_file())
    assert tree_snapshot(out / src.name) == reference
    assert entries(out) == [src.name]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_hostile_names_are_delivered_over_ssh_without_a_shell_reading_them(
        tmp_path: Path, sshd: SshServer, options: EngineOptions,
        strategy: TransferStrategy) -> None:
    name = "Mix $(touch PWNED) `touch PWNED2` 'q' \"d\" ; rm -rf x & -T"
    src = make_session_tree(tmp_path / "src", name, n_audio=2)
    out = tmp_path / "out dir $HOME"
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), job_id="job; rm -rf /tmp/x $(id)")
    _run(job, strategy, options)
    _run(dataclasses.replace(job, on_existing=OnExisting.REPLACE), strategy, options)
    assert_trees_identical(src, out / name)
    assert entries(out) == [name]
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.home().glob("PWNED*"))


def test_cli_refuses_an_existing_target_unless_told(tmp_path: Path) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=2)
    out = tmp_path / "out"
    old = _old_tree(out / src.name)
    env = {**os.environ, "KETTER_TEMP_DIR": str(tmp_path / "ltmp")}
    cli = [sys.executable, "-m", "mvp_core.transfer_engine.cli", "--from", str(src),
           "--to", str(out), "--quiet"]
    refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60,
                             check=False)
    assert refused.returncode == 1, refused.stderr
    assert "ketter: error:" in refused.stderr and "already exists" in refused.stderr
    assert tree_snapshot(out / src.name) == old
    replaced = subprocess.run([*cli, "--on-existing", "replace"], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
    assert replaced.returncode == 0, replaced.stderr
    assert_trees_identical(src, out / src.name)
    assert entries(out) == [src.name]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_leftovers_of_an_earlier_attempt_are_not_delivered(
        tmp_path: Path, sshd: SshServer, options: EngineOptions,
        strategy: TransferStrategy) -> None:
    """A killed rsync's temp file (or any stray) in the staging dir never reaches the
    final name; a partial file kept aside is resumed, never delivered as such."""
    src = make_session_tree(tmp_path / "src", n_audio=3)
    out = tmp_path / "out"
    staged = out / staging_name("again") / src.name / "Audio Files"
    staged.mkdir(parents=True)
    (staged / ".Kick_0000.wav.fr8CDb").write_bytes(b"rsync temp of a killed receiver")
    (staged / "gone from the source.wav").write_bytes(b"stale")
    (staged / ".ketter-partial").mkdir()
    (staged / ".ketter-partial" / "Kick_0001.wav").write_bytes(b"RIFF")
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), job_id="again")
    _run(job, strategy, options)
    assert_trees_identical(src, out / src.name)
    assert entries(out) == [src.name]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_caller_removes_the_staging_root_after_recording_done(
        tmp_path: Path, sshd: SshServer, options: EngineOptions,
        strategy: TransferStrategy) -> None:
    """``staging_cleanup_by_caller`` (the worker): the job ends with the tree in place
    and only the marker in its staging root; a retry before the caller's cleanup (the
    worker died before recording DONE) recognises the tree as its own, moves no byte
    and does not fail "target exists"; the caller's cleanup then leaves the final name
    alone."""
    src = make_session_tree(tmp_path / "src", "Night Mix", n_audio=3)
    out = tmp_path / "out"
    out.mkdir()
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), job_id="caller-cleans")
    keep = dataclasses.replace(options, staging_cleanup_by_caller=True)
    _run(job, strategy, keep)
    assert_trees_identical(src, out / "Night Mix")
    root = out / staging_name("caller-cleans")
    assert entries(out) == sorted([root.name, "Night Mix"])
    assert entries(root) == [DELIVERED_MARK]

    events: list[PhaseEvent] = []
    again = _run(job, strategy, keep, on_phase=events.append)
    assert again.files_transferred == sum(1 for p in src.rglob("*") if p.is_file())
    # DIRECT's guarded send is refused by the guard (final name present) before rsync
    # runs: no send completes, nothing is delivered twice.
    assert [e.status for e in events if e.phase == "send"] == (
        ["started", "skipped"] if strategy is TransferStrategy.DIRECT else [])
    assert "deliver" not in [e.phase for e in events]
    assert [e.details.get("resumed") for e in events if e.phase == "verify"] == [True, True]

    assert remove_staging_root(job, keep) is True
    assert entries(out) == ["Night Mix"]
    assert_trees_identical(src, out / "Night Mix")
    assert remove_staging_root(job, keep) is False  # idempotent


@pytest.mark.parametrize("strike", [("verify", "done"), ("deliver", "started")],
                         ids=lambda s: "-".join(s))
def test_killed_while_the_remote_waits_for_the_go_renames_nothing(
        tmp_path: Path, sshd: SshServer, options: EngineOptions,
        strike: tuple[str, str]) -> None:
    """Over ssh, verify and deliver share one session: the remote script has listed the
    staged tree and waits for our word. A worker killed then sends none: its stdin closes,
    and the script must take that as "no" (nothing renamed, no marker)."""
    src = make_session_tree(tmp_path / "src", n_audio=4, audio_size=16 * 1024)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    _killed_child(tmp_path, sshd, options, src, out, TransferStrategy.DIRECT, strike)
    time.sleep(1.0)  # give a wrongly obedient remote script time to rename
    root = out / staging_name("crash")
    assert entries(out) == [root.name]
    assert entries(root) == [src.name]  # the staged tree, no delivered marker
    assert tree_snapshot(src) == reference

    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), TransferMode.MOVE, job_id="crash")
    _run(job, TransferStrategy.DIRECT, options)  # the retry delivers
    assert tree_snapshot(out / src.name) == reference
    assert entries(out) == [src.name]
    assert not src.exists()


def test_a_staged_tree_that_does_not_match_is_never_renamed_over_ssh(
        tmp_path: Path, sshd: SshServer, options: EngineOptions) -> None:
    """The one-session path refuses like the two-session one: a file missing from the
    staged tree fails verification and nothing appears under the final name."""
    src = make_session_tree(tmp_path / "src", n_audio=3)
    out = tmp_path / "out"
    out.mkdir()
    victim = out / staging_name("mismatch") / src.name / "Audio Files" / "Kick_0001.wav"

    def on_phase(event: PhaseEvent) -> None:
        if (event.phase, event.status) == ("send", "done"):
            victim.unlink()  # lost between the send and the verify

    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), job_id="mismatch")
    with pytest.raises(VerificationError, match="missing: Audio Files/Kick_0001.wav"):
        _run(job, TransferStrategy.DIRECT, options, on_phase=on_phase)
    assert entries(out) == []  # nothing renamed; the failed job's staging dir is gone
    assert (src / "Audio Files" / "Kick_0001.wav").exists()
