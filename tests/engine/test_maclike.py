"""The engine against a macOS-like remote (../shared/maclike, see tests/fixtures/maclike):
Apple's openrsync (macOS 15+) and rsync 2.6.9 (macOS <= 14), BSD find/stat/mv, shasum
and md5, no GNU tools. Push and pull, DIRECT and ZIP_FIRST, copy and move, a hostile
tree with NFD and NFC names: every result identical and content-verified, nothing
left in temp or staging on either side."""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from pathlib import Path

import pytest

from mvp_core.transfer_engine import capabilities
from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.errors import RemoteCommandMissingError
from mvp_core.transfer_engine.execute import execute_plan
from mvp_core.transfer_engine.job import OnExisting, TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from tests.engine.conftest import temp_leftovers
from tests.fixtures.maclike import MacHost
from tests.fixtures.trees import OLD_MTIME, assert_trees_identical, make_hostile_tree

# A Mac hands out decomposed names; users type composed ones.
NFD_NAMES = (unicodedata.normalize("NFD", "Sessão/Áudio ção.wav"),
             unicodedata.normalize("NFC", "Sessão NFC/Mixagem é.wav"))
ROOT = "-Sessão 'x' $(y)"


def _tree(parent: Path) -> Path:
    root = make_hostile_tree(parent, name=ROOT)
    for i, rel in enumerate(NFD_NAMES):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(bytes([i]) * (100 + i))
    # Fixed times: the source and the reference are made a moment apart, and a second
    # may tick in between (seen once: every mtime 1 s apart).
    for rel in NFD_NAMES:
        for path in (root / rel, (root / rel).parent):
            os.utime(path, (OLD_MTIME, OLD_MTIME))
    os.utime(root, (OLD_MTIME, OLD_MTIME))
    return root


def _checked(options: EngineOptions) -> EngineOptions:
    return dataclasses.replace(options, verify="checksum")


def _only(folder: Path, name: str) -> None:
    """The delivered tree and nothing else: no staging root, no temp file."""
    assert sorted(p.name for p in folder.iterdir()) == [name]


@pytest.mark.parametrize("strategy", list(TransferStrategy))
@pytest.mark.parametrize("mode", list(TransferMode))
def test_push(mac_host: MacHost, tmp_path: Path, engine_options: EngineOptions,
              strategy: TransferStrategy, mode: TransferMode) -> None:
    src, reference = _tree(tmp_path / "src"), _tree(tmp_path / "ref")
    dest = tmp_path / "dest"
    job = TransferJob(LocalEndpoint(src), mac_host.endpoint(dest), mode, job_id="push")
    result = execute_plan(decide_strategy(job, force=strategy),
                          options=_checked(engine_options))
    assert result.algorithm == "sha256"  # shasum -a 256: content verified, not sizes
    assert all(f.hash for f in result.files)
    assert_trees_identical(reference, dest / ROOT)
    assert src.exists() == (mode is TransferMode.COPY)
    assert temp_leftovers(engine_options) == []
    _only(dest, ROOT)


@pytest.mark.parametrize("mode", list(TransferMode))
def test_pull(mac_host: MacHost, tmp_path: Path, engine_options: EngineOptions,
              mode: TransferMode) -> None:
    src, reference = _tree(tmp_path / "mac"), _tree(tmp_path / "ref")
    dest = tmp_path / "here"
    job = TransferJob(mac_host.endpoint(src), LocalEndpoint(dest), mode, job_id="pull")
    result = execute_plan(decide_strategy(job), options=_checked(engine_options))
    assert result.algorithm == "sha256" and all(f.hash for f in result.files)
    assert_trees_identical(reference, dest / ROOT)
    left = sorted(str(p.relative_to(src)) for p in src.rglob("*")) if src.exists() else None
    assert src.exists() == (mode is TransferMode.COPY), (result.warnings, left)
    if mode is TransferMode.MOVE:
        assert list((tmp_path / "mac").iterdir()) == []
    else:  # no probe file or anything else left beside the Mac's source
        _only(tmp_path / "mac", ROOT)
        assert_trees_identical(reference, src)
    assert temp_leftovers(engine_options) == []
    _only(dest, ROOT)


def test_probe_reads_the_mac(mac_host: MacHost, engine_options: EngineOptions) -> None:
    caps = capabilities.of_host(mac_host.endpoint("/"), engine_options)
    assert caps.rsync is not None and caps.rsync.protocol == 29
    assert caps.rsync.flavour == {"openrsync": capabilities.OPENRSYNC,
                                  "rsync269": capabilities.RSYNC2}[mac_host.variant]
    assert not caps.rsync.protects_args
    assert (caps.os, caps.find, caps.stat, caps.unzip) == ("Darwin", "bsd", "bsd", True)
    assert set(caps.hash_tools) == {"shasum", "md5"}
    assert "Darwin" in caps.describe() and "shasum" in caps.describe()


@pytest.mark.parametrize("strategy", list(TransferStrategy))
def test_a_mac_without_unzip_or_hash_tool_is_refused_before_a_byte_moves(
        mac_host_bare: MacHost, tmp_path: Path, engine_options: EngineOptions,
        strategy: TransferStrategy) -> None:
    src = _tree(tmp_path / "src")
    dest = tmp_path / "dest"
    job = TransferJob(LocalEndpoint(src), mac_host_bare.endpoint(dest), job_id="bare")
    with pytest.raises(RemoteCommandMissingError) as caught:
        execute_plan(decide_strategy(job, force=strategy), options=_checked(engine_options))
    if strategy is TransferStrategy.ZIP_FIRST:
        assert "unzip is not installed" in str(caught.value)
    else:
        assert "no hash tool" in str(caught.value)
    assert not dest.exists() or list(dest.iterdir()) == []
    assert temp_leftovers(engine_options) == []
    # verify=size is the documented fallback without a hash tool (DIRECT needs no unzip).
    if strategy is TransferStrategy.DIRECT:
        execute_plan(decide_strategy(job, force=strategy),
                     options=dataclasses.replace(engine_options, verify="size"))
        assert_trees_identical(src, dest / ROOT)


def test_a_path_typed_in_nfc_finds_the_macs_nfd_folder(
        mac_host: MacHost, tmp_path: Path, engine_options: EngineOptions) -> None:
    typed = "Sessão Final"
    on_disk = unicodedata.normalize("NFD", typed)
    assert typed.encode() != on_disk.encode()
    mac = tmp_path / "mac" / on_disk
    inner = mac / unicodedata.normalize("NFD", "Áudio")
    inner.mkdir(parents=True)
    (inner / "take 1.wav").write_bytes(b"RIFF" * 50)
    dest = tmp_path / "here"
    job = TransferJob(mac_host.endpoint(tmp_path / "mac" / typed), LocalEndpoint(dest),
                      TransferMode.MOVE, job_id="nfc")
    result = execute_plan(decide_strategy(job), options=_checked(engine_options))
    assert [f.path for f in result.files] == [unicodedata.normalize("NFD", "Áudio/take 1.wav")]
    # The folder crossed under its real (NFD) name, content verified, and left the Mac.
    assert (dest / on_disk / unicodedata.normalize("NFD", "Áudio") / "take 1.wav"
            ).read_bytes() == b"RIFF" * 50
    assert list((tmp_path / "mac").iterdir()) == []
    # The same the other way: a local NFD folder typed in NFC, pushed to the Mac.
    back = TransferJob(LocalEndpoint(dest / typed), mac_host.endpoint(tmp_path / "mac"),
                       job_id="nfc-back")
    execute_plan(decide_strategy(back), options=_checked(engine_options))
    assert (tmp_path / "mac" / on_disk).is_dir()


def test_a_portal_naming_a_missing_rsync_fails_before_a_byte_moves(
        mac_host: MacHost, tmp_path: Path, engine_options: EngineOptions) -> None:
    src = _tree(tmp_path / "src")
    dest = tmp_path / "dest"
    job = TransferJob(LocalEndpoint(src),
                      mac_host.endpoint(dest, rsync_path="/opt/homebrew/bin/rsync"),
                      TransferMode.MOVE, job_id="brew")
    with pytest.raises(RemoteCommandMissingError, match="rsync_path") as caught:
        execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT),
                     options=_checked(engine_options))
    assert "/opt/homebrew/bin/rsync is not installed" in str(caught.value)
    assert src.exists() and (not dest.exists() or list(dest.iterdir()) == [])


def test_an_old_rsync_refusing_protect_args_is_named_not_called_unreachable(
        mac_host: MacHost, tmp_path: Path, engine_options: EngineOptions) -> None:
    """What every job met before the probe: -s sent to a protocol-29 rsync (exit 12)."""
    from mvp_core.transfer_engine.capabilities import RsyncFlags
    from mvp_core.transfer_engine.errors import CommandFailedError, SshConnectionError
    from mvp_core.transfer_engine.rsync import build_argv, raise_for_result
    from mvp_core.transfer_engine.runner import run_command

    src = _tree(tmp_path / "src")
    argv = build_argv(LocalEndpoint(src), mac_host.endpoint(tmp_path / "dest"), engine_options,
                      flags=RsyncFlags(protect_args=True))
    result = run_command(argv, what="rsync")
    assert result.exit_code == 12
    with pytest.raises(CommandFailedError) as caught:
        raise_for_result(result)
    assert not isinstance(caught.value, SshConnectionError)
    assert "the remote rsync (protocol 29" in str(caught.value)
    assert "refused the option -s" in str(caught.value)


def test_direct_streams_push_to_a_mac(mac_host: MacHost, tmp_path: Path,
                                      engine_options: EngineOptions,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Several rsyncs with --files-from (rsync 2.6.9 cannot take --no-implied-dirs)."""
    from mvp_core.transfer_engine import streams

    monkeypatch.setattr(streams, "MIN_STREAM_BYTES", 1)
    src, reference = _tree(tmp_path / "src"), _tree(tmp_path / "ref")
    dest = tmp_path / "dest"
    job = TransferJob(LocalEndpoint(src), mac_host.endpoint(dest), TransferMode.MOVE,
                      job_id="streams")
    result = execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT),
                          options=dataclasses.replace(_checked(engine_options),
                                                      direct_streams=3))
    assert result.streams == 3
    assert_trees_identical(reference, dest / ROOT)
    assert not src.exists() and temp_leftovers(engine_options) == []
    _only(dest, ROOT)


@pytest.mark.parametrize("on_existing", [OnExisting.REPLACE, OnExisting.MERGE])
def test_replace_and_merge_on_a_mac(mac_host: MacHost, tmp_path: Path,
                                    engine_options: EngineOptions,
                                    on_existing: OnExisting) -> None:
    """The old tree set aside and renamed without overwrite (BSD mv), or merged into
    (symlinks looked for with BSD find); ZIP_FIRST in many chunks, some sent as is."""
    src, reference = _tree(tmp_path / "src"), _tree(tmp_path / "ref")
    dest = tmp_path / "dest"
    old = dest / ROOT / "old only.txt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"from before")
    options = dataclasses.replace(_checked(engine_options), zip_chunk_bytes=700)
    job = TransferJob(LocalEndpoint(src), mac_host.endpoint(dest), job_id="again",
                      on_existing=on_existing)
    execute_plan(decide_strategy(job, force=TransferStrategy.ZIP_FIRST), options=options)
    if on_existing is OnExisting.MERGE:
        assert old.read_bytes() == b"from before"
        old.unlink()
    else:
        assert not old.exists()
    assert_trees_identical(reference, dest / ROOT, root_mtime=False)
    assert temp_leftovers(engine_options) == []
    _only(dest, ROOT)


def test_the_engine_cli_takes_an_rsync_path(mac_host: MacHost, tmp_path: Path) -> None:
    """``--rsync-path``: the Mac's own /usr/bin/rsync works; a missing one is one line."""
    import os
    import subprocess
    import sys

    src = _tree(tmp_path / "src")
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env.update(KETTER_TEMP_DIR=str(tmp_path / "ltmp"),
               KETTER_REMOTE_TEMP_DIR=str(tmp_path / "rt"))
    spec = f"{mac_host.user}@{mac_host.host}:{mac_host.port}:{tmp_path / 'dest'}"

    def cli(rsync_path: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mvp_core.transfer_engine.cli", "--from", str(src), "--to",
             spec, "--strategy", "direct", "--quiet", "--identity", str(mac_host.identity_file),
             "--known-hosts", str(mac_host.known_hosts_file), "--rsync-path", rsync_path],
            cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)

    missing = cli("/opt/homebrew/bin/rsync")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        next(line for line in missing.stderr.splitlines() if line.startswith("ketter: error:"))]
    assert "/opt/homebrew/bin/rsync is not installed" in missing.stderr
    refused = cli("$(id)")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("ketter: error: invalid rsync_path '$(id)': an absolute "
                                      "path such as /opt/homebrew/bin/rsync")
    done = cli("/usr/bin/rsync")
    assert done.returncode == 0, done.stderr
    assert_trees_identical(src, tmp_path / "dest" / ROOT)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_long_path_to_a_host_without_dd_sends_big_files_whole(
        mac_host: MacHost, tmp_path: Path, engine_options: EngineOptions,
        monkeypatch: pytest.MonkeyPatch, direction: str) -> None:
    """On a long path a big file goes as byte ranges written by the remote's dd. The
    kit has no dd (a real Mac has BSD dd in /bin): the probe says so and the file goes
    whole, one rsync stream on its own connection, instead of failing the job. The
    path is made "long" by a link rate no loopback has (RTT x rate > a TCP window)."""
    from mvp_core.transfer_engine import path, ranges, streams
    from mvp_core.transfer_engine.direct import run_transfer

    monkeypatch.setattr(streams, "MIN_STREAM_BYTES", 1)
    monkeypatch.setattr(ranges, "MIN_RANGE", 1)  # a range-sized file: only no dd keeps it whole
    monkeypatch.setattr(path, "PROBE_MIN_BYTES", 1)
    src = tmp_path / "src" / "Render final é"
    src.mkdir(parents=True)
    (src / "mix.mov").write_bytes(bytes(range(256)) * (4 * 4096 + 17))  # 4 MiB and a crumb
    (src / "notes.txt").write_text("v2\n")
    reference = {p.name: p.read_bytes() for p in src.iterdir()}
    dest = tmp_path / "dest"
    job = (TransferJob(LocalEndpoint(src), mac_host.endpoint(dest), TransferMode.MOVE)
           if direction == "push" else
           TransferJob(mac_host.endpoint(src), LocalEndpoint(dest), TransferMode.MOVE))
    options = dataclasses.replace(_checked(engine_options), ssh_max_connections=3,
                                  direct_streams=1, link_bytes_s=10**15)
    events: list = []
    result = run_transfer(job, options=options, on_phase=events.append)
    assert capabilities.of_host(mac_host.endpoint(dest), options).dd is False
    [send] = [e for e in events if e.phase == "send" and e.status == "done"]
    assert not send.details.get("ranges") and result.connections > 1
    assert result.algorithm == "sha256"
    assert {p.name: p.read_bytes() for p in (dest / src.name).iterdir()} == reference
    assert not src.exists()
    _only(dest, src.name)
