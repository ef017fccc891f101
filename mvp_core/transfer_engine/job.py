"""What to transfer: the engine's unit of work, free of any database notion."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mvp_core.transfer_engine.endpoints import Endpoint


class TransferMode(str, Enum):
    COPY = "copy"
    MOVE = "move"


class OnExisting(str, Enum):
    """What to do when ``target/<basename>`` already exists (see docs/delivery.md).

    ``fail``: refuse before any byte moves. ``replace``: swap the old tree out only
    after the new one is verified. ``merge``: write into the existing tree (not atomic).
    """

    FAIL = "fail"
    REPLACE = "replace"
    MERGE = "merge"


@dataclass(frozen=True)
class TransferJob:
    """Copy or move ``source`` into the directory ``target``.

    The result is always ``target/<basename of source>/...`` (or
    ``target/<basename>`` for a single file), whatever the strategy.
    ``job_id`` names temp files and the staging directory so a retry of the same job
    finds and reuses (or replaces) them.
    """

    source: Endpoint
    target: Endpoint
    mode: TransferMode = TransferMode.COPY
    job_id: str = "adhoc"
    on_existing: OnExisting = OnExisting.FAIL
