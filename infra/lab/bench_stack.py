"""The whole Ketter stack for the bench: API on the host, arq worker inside LAB.

Filled in once the API and the worker exist; until then ``try_start`` says why not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent.parent


class Stack:
    @classmethod
    def try_start(cls, lab_env: dict[str, str], lab_dir: Path, py: str,
                  log: Callable[[str], None]) -> "Stack | None":
        for need in ("mvp_core/app/main.py", "mvp_core/worker/run.py"):
            if not (REPO / need).exists():
                log(f"stack: {need} missing")
                return None
        return None

    def set_lab(self, lab: Any) -> None: ...

    def method(self, strategy: str) -> Callable[..., Any]:
        raise NotImplementedError

    def one_file_overhead(self, data_base: Path, dest: Path, n: int) -> dict[str, object]:
        raise NotImplementedError

    def stop(self) -> None: ...
