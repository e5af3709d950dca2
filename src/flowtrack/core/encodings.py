"""The message report's rows kept encoded (store/encodings.py): the encoder
the fill jobs use, and the background filler.

- `encoder(row_bytes)`: a row's two encoded forms, the MessageRow's wire
  bytes (`row_bytes`, the face's: wire/encoded.message_row) and its flowtrack
  CSV line after the shared cells (export/csvlines.message_line with empty
  shared cells, without the recipient's cell before them). Exactly what a
  report and an export make of the same row when nothing is stored.
- `Filler`: fill jobs one after another while the writer is idle (no job
  queued), a bounded job at a time (store/encodings.FILL_BATCH rows, at most
  FILL_SCAN looked at), a few milliseconds apart; a pass over the whole
  table, then the next pass, at most every `interval` seconds: at once if
  the pass encoded anything, else after the next commit that changed
  something (`Writer.on_commit`), or after `rest` seconds. The server runs one (delivery/setup.py);
  `flowtrack db encode` runs `fill_all`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

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
        rest: float = 60.0,
        interval: float = 30.0,
        gap: float = 0.005,
    ) -> None:
        self.store = store
        self.encode = encoder(row_bytes)
        self.pause = pause  # how long it waits while the writer is busy
        self.rest = rest  # the longest wait for a commit after a pass that found nothing
        self.interval = interval  # a pass starts at most this often (seconds from the previous one's start)
        self.gap = gap  # between two jobs of a pass: the writer and the loop serve what came meanwhile
        self.after: sencodings.Position = sencodings.START
        self.encoded = 0  # rows this filler encoded (tests and metrics read it)
        self.passes = 0
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    def idle(self) -> bool:
        return self.store.writer.queued_rows == 0

    async def step(self) -> sencodings.Filled:
        """One fill job from where the pass is."""
        filled: sencodings.Filled = await self.store.write(
            sencodings.fill_job(self.encode, ROW_CLICKS_CAP, self.after), admitted=True
        )
        self.encoded += filled.encoded
        if filled.after is None:
            self.after = sencodings.START
            self.passes += 1
        else:
            self.after = filled.after
        return filled

    async def fill_all(self) -> int:
        """Passes until one finds nothing to encode; rows encoded."""
        total = 0
        while True:
            found = 0
            self.after = sencodings.START
            while True:
                filled = await self.step()
                found += filled.encoded
                if filled.after is None:
                    break
            total += found
            if not found:
                return total

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        changed = self._changed = asyncio.Event()

        def committed(_changed: dict[str, int], _touched: set[int]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed
                loop.call_soon_threadsafe(changed.set)

        self.store.writer.on_commit(committed)
        self._task = asyncio.create_task(self._run(), name="flowtrack-encodings")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        assert self._changed is not None
        found = 0
        began = -self.interval
        while True:
            try:
                if not self.idle():
                    await asyncio.sleep(self.pause)
                    continue
                if self.after == sencodings.START:
                    # A pass at most every `interval` seconds: under a steady
                    # trickle of commits the table is not scanned after each.
                    await asyncio.sleep(max(0.0, began + self.interval - time.monotonic()))
                    began = time.monotonic()
                    self._changed.clear()  # a commit from now on calls for another pass
                filled = await self.step()
                found += filled.encoded
                if filled.after is None:
                    if not found:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), self.rest)
                    found = 0
                else:
                    await asyncio.sleep(self.gap)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("filling the messages' encodings failed")
                await asyncio.sleep(self.rest)
