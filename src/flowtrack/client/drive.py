"""Driving a generated simulation into a server: create the campaign, add the
audience, then stream the events in batches through StreamEvents at a given
rate, counting what the server answers.

What was acknowledged is written to a small state file as the answers come
back (`Progress`), so that a simulation cut short (the server died, the
network went) can be resumed: `flowtrack simulate --resume` regenerates the
same events (the seed and the timeline's end are in the file) and sends
those after the acknowledged ones. StreamEvents answers the batches in the
order they were sent, so what is acknowledged is always a prefix of the
events. Events sent but not acknowledged are sent again; if the server had
committed them, they come back as duplicates (ingest is idempotent by
event id), so the stats are those of a run never interrupted."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from flowtrack.client.connection import Stubs
from flowtrack.client.simulate import Simulation
from flowtrack.v1 import campaign_pb2, ingest_pb2

AUDIENCE_BATCH = 5000  # recipients per AddRecipients message (the server takes up to 10,000)


@dataclass
class Summary:
    """What the server answered, over every batch."""

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    refused: int = 0
    batches: int = 0
    seconds: float = 0.0
    committed_sequence: int = 0
    # outcome name and reason (e.g. "CONFLICT EVENT_ID_REUSED") -> events
    refusals: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def add(self, reply: ingest_pb2.StreamEventsResponse) -> None:
        self.batches += 1
        self.sent += len(reply.results)
        self.accepted += reply.accepted
        self.duplicates += reply.duplicates
        self.refused += reply.refused
        self.committed_sequence = max(self.committed_sequence, reply.committed_sequence)
        for result in reply.results:
            if result.outcome in (
                ingest_pb2.EVENT_OUTCOME_CONFLICT,
                ingest_pb2.EVENT_OUTCOME_INVALID,
                ingest_pb2.EVENT_OUTCOME_REJECTED,
            ):
                why = result.reason or "; ".join(f"{v.field}: {v.reason}" for v in result.violations)
                self.refusals[
                    f"{ingest_pb2.EventOutcome.Name(result.outcome).removeprefix('EVENT_OUTCOME_')} {why}"
                ] += 1


def prepare(stubs: Stubs, sim: Simulation) -> tuple[bool, campaign_pb2.AddRecipientsResponse]:
    """Create the campaign as RUNNING (an existing one is kept as it is) and
    add the audience. Returns whether it was created, and AddRecipients' counts."""
    created = True
    campaign = campaign_pb2.Campaign()
    campaign.CopyFrom(sim.campaign)
    campaign.state = campaign_pb2.CAMPAIGN_STATE_RUNNING
    try:
        stubs.campaigns.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=campaign), timeout=stubs.timeout)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
            raise
        created = False
    campaign_id = sim.campaign.id

    def requests() -> Iterator[campaign_pb2.AddRecipientsRequest]:
        for start in range(0, len(sim.audience), AUDIENCE_BATCH):
            yield campaign_pb2.AddRecipientsRequest(
                campaign_id=campaign_id, recipients=sim.audience[start : start + AUDIENCE_BATCH]
            )

    added: campaign_pb2.AddRecipientsResponse = stubs.campaigns.AddRecipients(
        requests(), timeout=max(stubs.timeout, 120)
    )
    return created, added


def batches(
    events: Sequence[ingest_pb2.Event],
    batch_size: int,
    rate: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[ingest_pb2.StreamEventsRequest]:
    """The events in batches; with a rate (events/s), about ten batches a
    second, each sent when the rate allows."""
    size = batch_size if rate <= 0 else max(1, min(batch_size, round(rate / 10)))
    start = clock()
    for index, first in enumerate(range(0, len(events), size)):
        if rate > 0:
            due = start + first / rate
            wait = due - clock()
            if wait > 0:
                sleep(wait)
        yield ingest_pb2.StreamEventsRequest(batch_id=f"b{index}", events=events[first : first + size])


def send(
    stubs: Stubs,
    events: Sequence[ingest_pb2.Event],
    *,
    batch_size: int = 500,
    rate: float = 0.0,
    on_reply: Callable[[ingest_pb2.StreamEventsResponse, Summary], None] | None = None,
) -> Summary:
    """Stream every event, wait for every batch's answer, and count them."""
    summary = Summary()
    started = time.monotonic()
    replies: Iterable[ingest_pb2.StreamEventsResponse] = stubs.ingest.StreamEvents(batches(events, batch_size, rate))
    for reply in replies:
        summary.add(reply)
        if on_reply is not None:
            on_reply(reply, summary)
    summary.seconds = time.monotonic() - started
    return summary


@dataclass
class Progress:
    """A simulation's parameters and how far the server acknowledged it,
    kept in a JSON state file (rewritten, atomically, after each answer)."""

    campaign_id: str
    recipients: int
    seed: int
    end_time: float
    events: int  # events of the whole simulation
    acked: int = 0  # the first `acked` events are acknowledged
    accepted: int = 0
    duplicates: int = 0
    refused: int = 0
    committed_sequence: int = 0
    refusals: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.acked >= self.events

    def record(self, before: Progress, summary: Summary) -> None:
        """This run's answers so far (`summary`) on top of what `before` held."""
        self.acked = before.acked + summary.sent
        self.accepted = before.accepted + summary.accepted
        self.duplicates = before.duplicates + summary.duplicates
        self.refused = before.refused + summary.refused
        self.committed_sequence = max(before.committed_sequence, summary.committed_sequence)
        self.refusals = dict(Counter(before.refusals) + summary.refusals)

    def save(self, path: Path) -> None:
        folder = path.parent if str(path.parent) else Path(".")
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(asdict(self), out)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    @classmethod
    def load(cls, path: Path) -> Progress:
        """The state in `path`; ValueError if it is not one."""
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return cls(**data)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a simulate state file ({error})") from None


def state_path(campaign_id: str) -> Path:
    """The default state file of a campaign's simulation, in the working directory."""
    return Path(f".flowtrack-simulate-{campaign_id}.json")
