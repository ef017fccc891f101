"""Content hashes: the proof that the delivered bytes are the source's bytes.

Sizes say nothing about a file rewritten in place, a flipped byte or a stale file
that rsync's quick check skipped. Every file is therefore hashed on both sides and
compared before the rename and before a move deletes anything.

Algorithms: ``xxh128`` (fast, non-cryptographic; the ``xxhash`` package here,
``xxhsum -H2`` on a remote host), else ``sha256``, else ``md5`` -- whichever the
remote side can compute, probed once per host (``remote_algorithm``). Locally every
algorithm is Python's own, so both sides always agree on what is computed.

A local hash also records the file's stamp (size, mtime, inode) read from the open
file before and after reading: a file that changed while it was read says so.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import xxhash

from mvp_core.transfer_engine import capabilities, remote_sh
from mvp_core.transfer_engine.endpoints import Endpoint, SshEndpoint
from mvp_core.transfer_engine.errors import RemoteCommandMissingError, VerificationError
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.ssh import raise_for_remote, run_remote

XXH128, SHA256, MD5 = "xxh128", "sha256", "md5"
# Best first. The remote tool names each algorithm can use.
_REMOTE_TOOLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (XXH128, ("xxhsum",)),
    (SHA256, ("sha256sum", "shasum")),
    (MD5, ("md5sum", "md5")),
)
_READ = 1024 * 1024
_HASH_THREADS = 4


def new_hasher(algorithm: str) -> Callable[[], object]:
    """A factory of hash objects (``update``/``hexdigest``) for ``algorithm``."""
    if algorithm == XXH128:
        return xxhash.xxh3_128
    if algorithm == SHA256:
        return hashlib.sha256
    if algorithm == MD5:
        return hashlib.md5
    raise ValueError(f"unknown hash algorithm {algorithm!r}")


@dataclass(frozen=True)
class FileHash:
    """One file's content hash and its stamp ``size/mtime/inode`` while it was read
    (``""`` when unknown, e.g. hashed by a remote tool)."""

    digest: str
    stamp: str = ""


def stamp_of(st: os.stat_result) -> str:
    """The identity a file must keep to count as unchanged: size, mtime (ns), inode."""
    return f"{st.st_size}/{st.st_mtime_ns}/{st.st_ino}"


def hash_local_file(path: str, algorithm: str, cancel: CancelToken | None = None) -> FileHash:
    """Hash one local file without following a symlink; the stamp is taken from the
    open file, and is ``"changed"`` when it moved while the file was read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise VerificationError(f"not a regular file any more: {path}")
        h = new_hasher(algorithm)()
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
            while True:
                if cancel is not None and cancel.cancelled:
                    break
                block = f.read(_READ)
                if not block:
                    break
                h.update(block)  # type: ignore[attr-defined]
        after = os.fstat(fd)
    finally:
        os.close(fd)
    stamp = stamp_of(after) if stamp_of(before) == stamp_of(after) else "changed"
    return FileHash(h.hexdigest(), stamp)  # type: ignore[attr-defined]


def hash_local_tree(root: Path, rel_paths: Iterable[str], algorithm: str,
                    cancel: CancelToken | None = None) -> dict[str, FileHash]:
    """Hash the named files under ``root`` (``""`` = ``root`` itself) on a few threads:
    hashlib and xxhash release the GIL, so threads read and hash in parallel."""
    rels = list(rel_paths)

    def one(rel: str) -> tuple[str, FileHash]:
        full = os.path.join(root, rel) if rel else os.fspath(root)
        try:
            return rel, hash_local_file(full, algorithm, cancel)
        except OSError:
            return rel, FileHash("!")

    if len(rels) < 2:
        return dict(one(r) for r in rels)
    with ThreadPoolExecutor(max_workers=_HASH_THREADS, thread_name_prefix="ketter-hash") as pool:
        return dict(pool.map(one, rels))


# ---------------------------------------------------------------- remote side

def remote_tools(endpoint: SshEndpoint, options: EngineOptions,
                 cancel: CancelToken | None = None) -> tuple[str, ...]:
    """The hash tools a remote host has (from its one capability probe)."""
    return capabilities.of_host(endpoint, options, cancel).hash_tools


def remote_algorithm(endpoint: SshEndpoint, options: EngineOptions,
                     cancel: CancelToken | None = None) -> str:
    """The best algorithm the remote host can compute; a clear error when none."""
    tools = set(remote_tools(endpoint, options, cancel))
    for algorithm, names in _REMOTE_TOOLS:
        if tools & set(names):
            return algorithm
    raise RemoteCommandMissingError(
        f"{endpoint.host} has no hash tool to verify content with (looked for xxhsum, "
        "sha256sum, shasum, md5sum, md5): install xxhash (xxhsum) there, or run the "
        "job with verify=size")


def algorithm_for(endpoints: Iterable[Endpoint], options: EngineOptions,
                  cancel: CancelToken | None = None) -> str:
    """The algorithm a job uses: xxh128 when both sides are here, else the remote's best."""
    for endpoint in endpoints:
        if isinstance(endpoint, SshEndpoint):
            return remote_algorithm(endpoint, options, cancel)
    return XXH128


def parse_hash_output(data: bytes, root_is_dir: bool) -> dict[str, str]:
    """``HASH_TREE`` output: the batch part (``HASH  ./rel`` lines), a NUL, then per odd
    name a line whose first word is the hash, the name and a NUL. Names are relative
    (``./`` dropped); a file root is ``""``."""
    batch, sep, rest = data.partition(b"\0")
    if not sep:
        raise VerificationError("the remote hash listing ended early")
    hashes: dict[str, str] = {}
    for line in batch.split(b"\n"):
        cut = line.find(b" ./")
        if cut > 0:
            words = line[:cut].split()
            if words:
                hashes[os.fsdecode(line[cut + 3:])] = _digest(words[0])
    hashes.update(_parse_one_by_one(rest, root_is_dir))
    return hashes


def _digest(word: bytes) -> str:
    return word.decode("ascii", "replace").lstrip("\\").lower()


def _parse_one_by_one(data: bytes, root_is_dir: bool) -> dict[str, str]:
    hashes: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        nul = data.find(b"\0", nl + 1) if nl >= 0 else -1
        if nl < 0 or nul < 0:
            raise VerificationError("the remote hash listing ended early")
        words = data[pos:nl].split()
        digest = _digest(words[0]) if words else "!"
        name = os.fsdecode(data[nl + 1:nul])
        rel = name.removeprefix("./")
        hashes[rel if root_is_dir else ""] = digest
        pos = nul + 1
    return hashes


def hash_remote_tree(endpoint: SshEndpoint, algorithm: str, options: EngineOptions, *,
                     root_is_dir: bool, cancel: CancelToken | None = None) -> dict[str, str]:
    """Every regular file under a remote root, hashed there in one ssh command."""
    result = run_remote(endpoint, remote_sh.hash_tree_argv(algorithm, str(endpoint.path)),
                        options, what="hash files", cancel=cancel, check=False,
                        capture_stdout=True)
    if result.exit_code == 4:
        raise VerificationError(f"nothing to hash at {endpoint}", **result.evidence())
    raise_for_remote(result, endpoint, "hash files")
    return parse_hash_output(result.stdout, root_is_dir)


def hash_tree(endpoint: Endpoint, rel_paths: Iterable[str], algorithm: str,
              options: EngineOptions, *, root_is_dir: bool,
              cancel: CancelToken | None = None) -> dict[str, FileHash]:
    """Hashes of ``rel_paths`` under ``endpoint``, here or there. Over ssh every file of
    the tree is hashed (one command); callers look up the ones they need."""
    if isinstance(endpoint, SshEndpoint):
        remote = hash_remote_tree(endpoint, algorithm, options, root_is_dir=root_is_dir,
                                  cancel=cancel)
        return {rel: FileHash(digest) for rel, digest in remote.items()}
    return hash_local_tree(Path(endpoint.path), rel_paths, algorithm, cancel)
