"""The types every layer of ingest shares: what became of an event
(`Outcome`, `Result`), the server's ingest options, and the event kinds
as the store records them. Pure: no grpc, no SQL."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# The `kind` column of a stored event.
KIND_STATUS = 1
KIND_CLICK = 2


class Outcome(IntEnum):
    """Same numbers as the proto's EventOutcome."""

    ACCEPTED = 1
    DUPLICATE = 2
    CONFLICT = 3
    INVALID = 4
    REJECTED = 5


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one valid event: its outcome, the sequence it is stored
    at (the new one, or the earlier event's for DUPLICATE and CONFLICT; 0 when
    not stored) and, for CONFLICT and REJECTED, an UPPER_SNAKE reason."""

    outcome: Outcome
    sequence: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Options:
    """The server settings that change how events are stored."""

    strict_campaigns: bool = False  # refuse events of unknown campaigns (REJECTED)
    store_ip: bool = False  # keep click IP addresses (otherwise discarded)
