"""Re-classifications of stored clicks finished in the background
(core/settings.py `finish_pending`).

A change of a business's bot rules records its re-classification and the
UpdateSettings call works it through; what a call leaves unfinished (its
client cancelled, its deadline passed, the server stopped or was killed),
and what an upgrade asks for (revision 0012: the clicks stored before bot
clicks were known), this task finishes: a round soon after start-up, again
every INTERVAL seconds, as soon as a call of this server gives up, and when
another worker's hold on a business lapses (a replica killed mid-way: its
hold lasts core/settings.HOLD_US after its last page). Each business's pages
run under its hold, read and move the progress in their own transactions,
so replicas running rounds at once share the businesses, never a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

from flowtrack.core import background
from flowtrack.core.settings import Round, Settings

log = logging.getLogger(__name__)

INTERVAL = 60.0  # seconds between rounds when nothing wakes the task
FIRST_ROUND_AFTER = 1.0  # seconds after start


class Reclassifier:
    def __init__(self, core: Settings, interval: float = INTERVAL) -> None:
        self.core = core
        self.interval = interval
        self.holder = "server:" + secrets.token_hex(8)
        self.rounds = 0  # rounds run, finished or failed (tests wait on it)
        self.last: Round | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.core.left_unfinished = self.wake
        self._task = asyncio.create_task(self._run(), name="flowtrack-reclassify")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        await background.cancelled(self._task)

    async def round_once(self) -> Round:
        try:
            done = await self.core.finish_pending(self.holder)
        finally:
            self.rounds += 1
        self.last = done
        return done

    async def _run(self) -> None:
        delay = FIRST_ROUND_AFTER
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()
            delay = self.interval
            try:
                done = await self.round_once()
                if done.finished:
                    log.info(
                        "finished %d re-classification(s) of stored clicks: %d clicks changed class or reason",
                        done.finished,
                        done.changed,
                    )
                if done.held_until is not None:  # another worker's hold: look again once it lapses
                    delay = min(delay, max(0.1, done.held_until / 1e6 - time.time() + 0.1))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("re-classification of stored clicks failed")
