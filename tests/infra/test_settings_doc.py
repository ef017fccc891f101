"""README's settings table is the one list of variables: every KETTER_* that the code or a
script reads appears in it (a new variable without a row fails here)."""

from __future__ import annotations

import re
from pathlib import Path

from mvp_core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
# Script internals (not set by anyone) and the placeholder of a comment.
INTERNAL = {"KETTER_INFRA_DIR", "KETTER_COMPOSE_FILE", "KETTER_X"}
NAME = re.compile(r"\bKETTER_[A-Z0-9_]*[A-Z0-9]\b")


def readme_table() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Settings") : text.index("## Install on a LAB host")]
    rows = [ln.split("|")[1] for ln in section.splitlines() if ln.startswith("| `")]
    return {name for row in rows for name in NAME.findall(row)}


def read_somewhere() -> set[str]:
    sources = [
        *(ROOT / "infra").glob("*.sh"),
        ROOT / "infra" / "docker-compose.yml",
        *(ROOT / "infra" / "systemd").glob("*.service"),
        ROOT / "Makefile",
        ROOT / "scripts" / "bootstrap.sh",
        *(p for p in (ROOT / "mvp_core").rglob("*.py") if "transfer_engine" not in p.parts),
    ]
    found = {name for path in sources for name in NAME.findall(path.read_text())}
    return found - INTERNAL


def test_every_variable_has_a_row() -> None:
    documented = readme_table()
    settings = {f"KETTER_{name.upper()}" for name in Settings.model_fields}
    missing = (settings | read_somewhere()) - documented
    assert not missing, f"README's settings table lacks {sorted(missing)}"
    assert "KETTER_ENV_FILE" in documented and "KETTER_API_HOST" in documented


def test_the_table_names_nothing_that_does_not_exist() -> None:
    known = {f"KETTER_{name.upper()}" for name in Settings.model_fields} | read_somewhere()
    unknown = readme_table() - known
    assert not unknown, f"README documents variables nothing reads: {sorted(unknown)}"
