"""What to transfer: the engine's unit of work, free of any database notion."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mvp_core.transfer_engine.endpoints import Endpoint


class TransferMode(str, Enum):
    COPY = "copy"
    MOVE = "move"


@dataclass(frozen=True)
class TransferJob:
    """Copy or move ``source`` into the directory ``target``.

    The result is always ``target/<basename of source>/...`` (or
    ``target/<basename>`` for a single file), whatever the strategy.
    ``job_id`` names temp files so a retry of the same job finds and replaces them.
    """

    source: Endpoint
    target: Endpoint
    mode: TransferMode = TransferMode.COPY
    job_id: str = "adhoc"
