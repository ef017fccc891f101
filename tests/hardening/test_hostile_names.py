"""Hostile names through the whole service (API -> worker -> rsync/zip/ssh/unzip):
quotes, $(...), backticks, ;, newlines, a leading '-', 255-byte names and non-UTF-8
bytes, in the tree AND in the job's own source path. Every case is transferred intact
(ZIP_FIRST falls back to DIRECT, saying why, for a non-UTF-8 name) and no shell ever
runs one: names that would create ``PWNED_<uuid>`` files if executed never do.

The engine-level hostile tree (tests/engine/test_hostile_names.py) is reused here
through ``make_hostile_tree``; this adds what it lacks and goes through the service.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.fixtures.stack import REPO_ROOT, Stack
from tests.fixtures.trees import assert_trees_identical, make_hostile_tree
from tests.hardening.conftest import FINAL, submit, temp_files
from tests.service.conftest import Portals

NON_UTF8 = b"take \xff\xfe latin1 \xe9.wav"
LONG_NAME = "L" * 251 + ".wav"  # 255 bytes: the longest name ext4/tmpfs allow
assert len(LONG_NAME.encode()) == 255


def _injections(marker: str) -> list[str]:
    """Names that create PWNED files if any shell, local or remote, ever evaluates them.
    No '/' in a name: ``cd;cd ..;cd tmp`` reaches /tmp from any home directory."""
    to_tmp = "cd;cd ..;cd tmp;touch"
    return [
        f"$({to_tmp} {marker}_dollar)",
        f"`{to_tmp} {marker}_backtick`",
        f"x; {to_tmp} {marker}_semi",
        f"x\n{to_tmp} {marker}_newline",
        f"x && touch {marker}_and || touch {marker}_or",
        f"-e touch {marker}_dash",
        f"--rsh=touch {marker}_rsh",
        f"'; touch {marker}_quote; '",
        f"\"; touch {marker}_dquote; \"",
    ]


def _pwned(marker: str, *roots: Path) -> list[str]:
    places = [Path("/tmp"), Path.home(), REPO_ROOT, Path("/"), *roots]
    found: list[str] = []
    for place in places:
        if place.is_dir():
            pattern = f"**/{marker}*" if place in roots else f"{marker}*"
            found += [str(p) for p in place.glob(pattern)]
    return found


def _build(parent: Path, name: str, marker: str, *, non_utf8: bool) -> Path:
    root = make_hostile_tree(parent, name)
    extra = root / "more"
    extra.mkdir()
    for i, bad in enumerate(_injections(marker)):
        (extra / bad).write_bytes(f"payload {i}\n".encode())
    (extra / LONG_NAME).write_bytes(b"long name")
    os.mkdir(extra / ("D" * 255))
    (extra / ("D" * 255) / LONG_NAME).write_bytes(b"long in long")
    if non_utf8:
        os.mkdir(os.fsencode(extra) + b"/dir \xc3\x28 bad")
        with open(os.fsencode(extra) + b"/" + NON_UTF8, "wb") as fh:
            fh.write(b"latin-1 named take")
    return root


def _reference(source: Path, where: Path) -> Path:
    where.mkdir(parents=True)
    subprocess.run(["cp", "-a", "--", str(source), str(where)], check=True, timeout=60)
    return where / source.name


CASES = {
    # id: (requested strategy, tree has non-UTF-8 names, expected strategy, mode)
    "direct-move": ("direct", True, "DIRECT", "move"),
    "zip_first-move": ("zip_first", False, "ZIP_FIRST", "move"),
    "zip_first-non-utf8-falls-back": ("zip_first", True, "DIRECT", "copy"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_names_through_the_service(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, tmp_path: Path,
        case: str) -> None:
    requested, non_utf8, expected, mode = CASES[case]
    stack, client = ketter_stack, api_client
    marker = f"PWNED_{uuid.uuid4().hex}"
    # The job's own source path is hostile too (leading '-', $(...), quotes, newline).
    name = f"-rf $(touch {marker}_src) 'q' \"d\" `id`;x\nnext"
    source = _build(portals.local_src_base, name, marker, non_utf8=non_utf8)
    reference = _reference(source, tmp_path / "reference")
    stack.start_worker()
    job = submit(client, portals, name, strategy=requested, mode=mode)
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)

    assert final["status"] == "DONE", final
    assert final["strategy"] == expected, final
    if expected != requested.upper():
        plan = next(e for e in stack.events(client, job["id"]) if e["event_type"] == "plan")
        assert "not valid UTF-8" in plan["payload"]["reason"], plan
    assert_trees_identical(reference, portals.ssh_dst_base / name)
    assert os.path.exists(os.fsencode(portals.ssh_dst_base / name / "more") + b"/" + NON_UTF8) \
        is non_utf8
    assert source.exists() is (mode == "copy")
    assert temp_files(stack.env) == []
    assert _pwned(marker, tmp_path) == [], "a name was executed by a shell"


def test_hostile_names_from_a_remote_source_move(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, tmp_path: Path
) -> None:
    """ssh portal as the SOURCE (rsync pulls, the remote deletes): the other direction."""
    stack, client = ketter_stack, api_client
    marker = f"PWNED_{uuid.uuid4().hex}"
    name = f"--delete $(touch {marker}_src);`id`"
    source = _build(portals.ssh_dst_base, name, marker, non_utf8=True)
    reference = _reference(source, tmp_path / "reference")
    stack.start_worker()
    job = submit(client, portals, name, source_portal_id=portals.ssh_dst,
                 target_portal_id=portals.local_dst, mode="move", strategy="zip_first")
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "DONE", final
    assert final["strategy"] == "DIRECT"  # zips are built locally only: said in the plan
    assert_trees_identical(reference, portals.local_dst_base / name)
    assert not source.exists()
    assert _pwned(marker, tmp_path) == [], "a name was executed by a shell"
