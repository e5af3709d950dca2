"""The message report's rows kept encoded (store/encodings.py): the encoder
the fill jobs use, and the background filler.

- `encoder(row_bytes)`: a row's two encoded forms, the MessageRow's wire
  bytes (`row_bytes`, the face's: wire/encoded.message_row) and its flowtrack
  CSV line after the shared cells (export/csvlines.message_line with empty
  shared cells, without the recipient's cell before them). Exactly what a
  report and an export make of the same row when nothing is stored.
- `Filler`: fill jobs one after another while the writer is idle (no job
  queued), a bounded job at a time (store/encodings.FILL_BATCH rows, at most
  FILL_SCAN looked at), a few milliseconds apart. What a pass goes over is
  bounded by what changed: the businesses whose sequence moved since the
  last pass (`Writer.on_commit`: on PostgreSQL every replica's commits),
  each from its first row to its last once nothing was committed to it for
  `settle` seconds (rows still changing are left to the next pass, and the
  writer to the ingest); the whole table only at start-up
  and then every `rest` seconds (what changes rows without a new sequence:
  erasure, retention, a change of the bot rules, an upgrade). A pass starts
  at most every `interval` seconds, and no sooner than `1/duty` times the
  writer time the last one took; while an ingest goes on (a sequence moved
  within `settle` seconds), the jobs of a pass are spaced the same way:
  filling takes at most that share of the writer, whatever the size of the
  database (a server started on a large table of unfilled rows filled 6,000
  rows during its first 2,000 events before the spacing). The server runs one
  (delivery/setup.py); `flowtrack db encode` runs `fill_all`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from flowtrack.core import background
from flowtrack.core.reports import ROW_CLICKS_CAP
from flowtrack.domain.records import ButtonTap, Click, LinkClick, MessageRecord
from flowtrack.export import columns, csvlines
from flowtrack.store import encodings as sencodings
from flowtrack.store.base import Store

log = logging.getLogger(__name__)

RowBytes = Callable[[MessageRecord, Sequence[LinkClick], Sequence[ButtonTap]], bytes]

# One read of a row's clicks and taps serves both forms.
assert ROW_CLICKS_CAP == columns.LINK_CLICKS_CAP


def encoder(row_bytes: RowBytes) -> sencodings.Encode:
    """The fill jobs' encoder (see the module)."""
    field, line = csvlines.field, csvlines.message_line

    def encode(
        records: Sequence[MessageRecord], links: dict[str, list[LinkClick]], taps: dict[str, list[ButtonTap]]
    ) -> list[tuple[bytes, str]]:
        out: list[tuple[bytes, str]] = []
        for r in records:
            clicked, tapped = links.get(r.recipient), taps.get(r.recipient)
            as_clicks = None if clicked is None else [Click(c.link_id, c.link_variable, c.occurred_at) for c in clicked]
            made = line(r, "", as_clicks, tapped)
            out.append((row_bytes(r, clicked or (), tapped or ()), made[len(field(r.recipient)) + 1 :]))
        return out

    return encode


def tail_lines(rows: Sequence[tuple[str, str]], shared: str) -> list[str]:
    """The CSV lines of rows (recipient, stored tail) of a page, with the
    export's shared cells `shared` (csvlines.context)."""
    field = csvlines.field
    return [f"{field(recipient)},{shared}{tail}" for recipient, tail in rows]


class Filler:
    """Fills the messages' encodings in the background (see the module)."""

    def __init__(
        self,
        store: Store,
        row_bytes: RowBytes,
        *,
        pause: float = 0.2,
        rest: float = 3600.0,
        interval: float = 30.0,
        gap: float = 0.005,
        duty: float = 0.05,
        settle: float = 5.0,
    ) -> None:
        self.store = store
        self.encode = encoder(row_bytes)
        self.pause = pause  # how long it waits while the writer is busy
        self.rest = rest  # a pass over the whole table at start-up, then at most this often
        self.interval = interval  # a pass starts at most this often (seconds from the previous one's start)
        self.gap = gap  # between two jobs of a pass: the writer and the loop serve what came meanwhile
        self.duty = duty  # the largest share of the time the passes take of the writer
        self.settle = settle  # a business is filled once nothing was committed to it for this long
        self.after: sencodings.Position = sencodings.START
        self.encoded = 0  # rows this filler encoded (tests and metrics read it)
        self.passes = 0
        self.scanned = 0  # rows its jobs looked at
        self._dirty: dict[str, float] = {}  # business -> when its sequence last moved (not filled since)
        self._last_commit = -settle  # when a sequence last moved (monotonic): an ingest goes on
        self._full_due = 0.0  # when the next pass over the whole table is due (monotonic)
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    def idle(self) -> bool:
        return self.store.writer.queued_rows == 0

    async def step(self, within: bool = False) -> sencodings.Filled:
        """One fill job from where the pass is (with `within`: in its business only)."""
        filled: sencodings.Filled = await self.store.write(
            sencodings.fill_job(self.encode, ROW_CLICKS_CAP, self.after, within=within), admitted=True
        )
        self.encoded += filled.encoded
        self.scanned += filled.scanned
        self.after = sencodings.START if filled.after is None else filled.after
        return filled

    async def fill_all(self) -> int:
        """Passes over the whole table until one finds nothing to encode; rows encoded."""
        total = 0
        while True:
            found = 0
            self.after = sencodings.START
            while True:
                filled = await self.step()
                found += filled.encoded
                if filled.after is None:
                    break
            self.passes += 1
            total += found
            if not found:
                return total

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        changed = self._changed = asyncio.Event()

        def mark(businesses: list[str]) -> None:
            now = self._last_commit = time.monotonic()
            self._dirty.update((business_id, now) for business_id in businesses)
            changed.set()

        def committed(sequences: dict[str, int], _touched: set[int]) -> None:
            if sequences:
                with contextlib.suppress(RuntimeError):  # the loop closed
                    loop.call_soon_threadsafe(mark, list(sequences))

        self.store.writer.on_commit(committed)
        self._task = asyncio.create_task(self._run(), name="flowtrack-encodings")

    async def stop(self) -> None:
        await background.cancelled(self._task)

    async def _run(self) -> None:
        assert self._changed is not None
        began, busy = -self.interval, 0.0
        while True:
            queue: list[str | None] = []
            try:
                now = time.monotonic()
                ready = began + max(self.interval, busy / self.duty)
                if now < ready:
                    await asyncio.sleep(ready - now)
                    continue
                # A business still being written to is left until it settles:
                # its rows would change again, and the writer is needed.
                settled = sorted(b for b, at in self._dirty.items() if now - at >= self.settle)
                full = now >= self._full_due and len(settled) == len(self._dirty)
                if not full and not settled:
                    if self._dirty:
                        wake = min(at + self.settle for at in self._dirty.values())
                        if self._full_due > now:
                            wake = min(wake, self._full_due)
                        await asyncio.sleep(max(0.01, wake - now))
                    else:
                        self._changed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), max(0.01, self._full_due - now))
                    continue
                began, busy = time.monotonic(), 0.0
                if full:
                    self._full_due = began + self.rest
                    self._dirty.clear()
                    queue = [None]  # the whole table
                else:
                    queue.extend(settled)
                    for business_id in settled:
                        del self._dirty[business_id]
                while queue:
                    busy += await self._pass(queue[0])
                    queue.pop(0)
                self.passes += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("filling the messages' encodings failed")
                self._dirty.update((b, time.monotonic()) for b in queue if b is not None)  # tried again later
                await asyncio.sleep(min(self.rest, 60.0))

    async def _pass(self, business_id: str | None) -> float:
        """Fill jobs over one business (None: the whole table) while the
        writer is idle; the writer time they took."""
        self.after = sencodings.START if business_id is None else sencodings.business_start(business_id)
        busy = 0.0
        while True:
            while not self.idle():
                await asyncio.sleep(self.pause)
            filled = await self.step(within=business_id is not None)
            busy += filled.seconds
            if filled.after is None:
                return busy
            await asyncio.sleep(self._spacing(filled.seconds))

    def _spacing(self, seconds: float) -> float:
        """The wait after a job of a pass that took the writer `seconds`:
        while an ingest goes on (a sequence moved within `settle` seconds),
        long enough that the pass takes at most `duty` of the writer (a pass
        over a large table, at start-up, no longer takes the writer's idle
        moments between an ingest's batches); otherwise `gap`."""
        if time.monotonic() - self._last_commit >= self.settle:
            return self.gap
        return max(self.gap, seconds / self.duty - seconds)
