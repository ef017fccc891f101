"""Paths typed in NFC found on disk in NFD (and left alone when ambiguous)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from mvp_core.transfer_engine.names import resolve_local, same_name


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def test_each_missing_component_takes_its_one_nfc_equal_sibling(tmp_path: Path) -> None:
    real = tmp_path / nfd("Sessão") / "Audio" / nfd("Mixagem é")
    real.mkdir(parents=True)
    typed = tmp_path / "Sessão" / "Audio" / "Mixagem é"
    assert typed != real and not typed.exists()
    assert resolve_local(typed) == real
    assert resolve_local(real) == real  # an existing path is never changed
    assert resolve_local(tmp_path / "Sessão" / "nothing") == tmp_path / "Sessão" / "nothing"


def test_two_siblings_equal_under_nfc_are_ambiguous(tmp_path: Path) -> None:
    # The Angstrom sign and A + combining ring both compose to U+00C5.
    (tmp_path / "\u212b ngstrom").mkdir()
    (tmp_path / "A\u030a ngstrom").mkdir()
    typed = tmp_path / "\u00c5 ngstrom"
    assert same_name(typed.name, "\u212b ngstrom") and same_name(typed.name, "A\u030a ngstrom")
    assert resolve_local(typed) == typed  # left as typed: reported missing as usual
