"""ASC MHL v2.0: the delivery receipt inside the delivered folder, for media tools.

A studio's receiving side checks a delivery with standard tools (``ascmhl``, Silverstack,
Hedge): they read ``<folder>/ascmhl/``, a chain file listing generations, each a
hash list. Ketter writes generation 1 from the hashes it already verified (nothing is
read again), before the rename, so the folder appears with its receipt.

Written only where it is a faithful first generation: ASC MHL knows md5, sha1, c4 and
the xxh family (not sha256), and a folder that already holds an ``ascmhl`` history
(a camera card's, an earlier merge's) is not extended; both are said as warnings.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from xml.sax.saxutils import escape, quoteattr

from mvp_core.transfer_engine.results import DeliveredFile

FOLDER = "ascmhl"
CHAIN = "ascmhl_chain.xml"
# What ASC MHL v2.0 can carry among the algorithms Ketter verifies with.
SUPPORTED = frozenset({"xxh128", "md5"})
_C4_CHARSET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def c4_id(data: bytes) -> str:
    """The C4 id of ``data`` (base58 of its SHA-512, 90 characters): how a chain file
    names each generation's content."""
    value = int.from_bytes(hashlib.sha512(data).digest(), "big")
    digits = ""
    while value:
        value, rest = divmod(value, 58)
        digits = _C4_CHARSET[rest] + digits
    return "c4" + digits.rjust(88, _C4_CHARSET[0])


def _when(ns: int | None, fallback: datetime) -> str:
    stamp = (datetime.fromtimestamp(ns // 1_000_000_000, UTC) if ns is not None else fallback)
    return stamp.replace(microsecond=0).isoformat()


def generation_name(folder_name: str, now: datetime) -> str:
    """``0001_<folder>_<date>_<time>Z.mhl``, the name ascmhl itself gives generation 1."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in folder_name) or "folder"
    return f"0001_{safe}_{now.strftime('%Y-%m-%d_%H%M%S')}Z.mhl"


def generation_xml(files: Iterable[DeliveredFile], algorithm: str, *, hostname: str,
                   tool_version: str, now: datetime) -> bytes:
    """Generation 1 of a delivered folder: every file's path, size, mtime and hash."""
    when = now.replace(microsecond=0).isoformat()
    rows = []
    for f in files:
        path = os.fsencode(f.path).decode("utf-8", "replace")
        rows.append(
            "    <hash>\n"
            f"      <path size=\"{f.size}\" lastmodificationdate=\"{_when(f.mtime_ns, now)}\">"
            f"{escape(path)}</path>\n"
            f"      <{algorithm} action=\"original\" hashdate=\"{when}\">{f.hash}</{algorithm}>\n"
            "    </hash>\n")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<hashlist version="2.0" xmlns="urn:ASC:MHL:v2.0">\n'
        "  <creatorinfo>\n"
        f"    <creationdate>{when}</creationdate>\n"
        f"    <hostname>{escape(hostname)}</hostname>\n"
        f"    <tool version={quoteattr(tool_version)}>Ketter</tool>\n"
        "  </creatorinfo>\n"
        "  <processinfo>\n"
        "    <process>transfer</process>\n"
        "    <ignore>\n"
        "      <pattern>.DS_Store</pattern>\n"
        f"      <pattern>{FOLDER}</pattern>\n"
        f"      <pattern>{FOLDER}/</pattern>\n"
        "    </ignore>\n"
        "  </processinfo>\n"
        "  <hashes>\n"
        + "".join(rows)
        + "  </hashes>\n"
        "</hashlist>\n").encode("utf-8")


def chain_xml(generation: str, content: bytes) -> bytes:
    """The chain file naming generation 1 and its C4 id."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ascmhldirectory xmlns="urn:ASC:MHL:DIRECTORY:v2.0">\n'
        '  <hashlist sequencenr="1">\n'
        f"    <path>{escape(generation)}</path>\n"
        f"    <c4>{c4_id(content)}</c4>\n"
        "  </hashlist>\n"
        "</ascmhldirectory>\n").encode()
