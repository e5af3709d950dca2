"""Server settings: one dataclass, filled from flags and FLOWTRACK_* variables."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Everything `flowtrack serve` can be told. Defaults are the embedded,
    zero-set-up ones."""

    listen: str = "127.0.0.1:50051"
    database: str = "./flowtrack.db"
    # full: acknowledged events survive a process kill and an OS crash.
    # normal: they survive a process kill only (faster for single events).
    durability: str = "full"
    grace: float = 5.0
    # Refuse events for campaigns that were never created (else create them).
    strict_campaigns: bool = False
    # Store clickers' IP addresses (else accept and discard them).
    store_ip: bool = False
    # How far into the future an event's occurred_at may be, in seconds.
    max_future_skew: float = 3600.0
    # Most events in one StreamEvents batch.
    max_batch_events: int = 5000
    # Batches of one stream awaiting commit before the server stops reading it.
    max_inflight_batches: int = 4
    # Most rows the writer commits in one transaction.
    max_commit_rows: int = 10000
    # Largest request message, bytes.
    max_receive_message_bytes: int = 16 * 1024 * 1024
