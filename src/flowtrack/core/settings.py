"""A business's settings (SettingsService): read them, change them, and the
re-classification of stored clicks that a change of the bot rules starts.

The change records the re-classification in its own transaction
(store/bots.py: `reclassifications`, per business, with its progress), then
the call works it through before it returns: one writer job per page of
messages with a click (`reclassify_step`), each moving the progress on in
its own transaction, so the writer is held a few milliseconds at a time and
ingest goes on between pages. Each page classifies with the rules as
committed when it runs, and ingest after the change classifies with the new
ones, so a change and concurrent ingest end consistent (tests/test_bots.py).

A re-classification the call does not finish (the client cancelled or its
deadline passed, the server stopped or was killed) stays recorded: a
server's background task (`finish_pending`, run by delivery/reclassify.py
at start-up and every interval) finishes it from where it was. Whoever
works a business holds it for HOLD_US, renewed by each page; a call that
gives up lets go at once. A newer change of the rules starts the
re-classification again and takes it over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from flowtrack.core.calls import Call, require
from flowtrack.domain.bots import BusinessSettings, SettingsChange
from flowtrack.domain.keys import Scope
from flowtrack.store import bots as sbots
from flowtrack.store.base import Store

log = logging.getLogger(__name__)

__all__ = ["HOLD_US", "BusinessSettings", "Round", "Settings", "SettingsChange", "Worked"]

# How long a worker's hold on a business's re-classification lasts after its
# last page (each page renews it): a worker that died lets it go this long after.
HOLD_US = 10 * 1_000_000
# Pending re-classifications read per page of a background round.
_PENDING_PER_PAGE = 100


@dataclass(frozen=True, slots=True)
class Worked:
    """What a worker did of a business's re-classification: the clicks its
    own pages changed, and whether it is finished (else another holder has
    it now)."""

    changed: int
    finished: bool


@dataclass
class Round:
    """A background round: the re-classifications it finished, the clicks
    its pages changed, when the earliest hold of another worker lapses
    (None: none held), and the businesses whose pages failed."""

    finished: int = 0
    changed: int = 0
    held_until: int | None = None
    failed: int = 0  # businesses whose pages failed (logged; the next round tries again)


class Settings:
    def __init__(self, store: Store) -> None:
        self.store = store
        # Told when a call leaves a re-classification unfinished (the background task's wake-up).
        self.left_unfinished: Callable[[], None] = lambda: None

    async def get(self, call: Call) -> BusinessSettings:
        require(call.principal, Scope.READ, "reading settings")
        return await self.store.read(sbots.get_settings, call.business_id)

    async def update(self, call: Call, change: SettingsChange) -> tuple[BusinessSettings, int]:
        """The settings after `change` (checked by the face: domain/bots.py),
        and how many stored clicks this call's re-classification changed
        class or reason."""
        require(call.principal, Scope.ADMIN, "changing settings")
        holder = "call:" + secrets.token_hex(8)
        settings, changed = await self.store.write(sbots.update_settings(call.business_id, change, holder, HOLD_US))
        if not changed:
            return settings, 0
        try:
            worked = await self.work(call.business_id, holder)
        except BaseException:  # cancelled, or the store failed: the background finishes it
            await self._let_go(call.business_id, holder)
            raise
        if not worked.finished:
            self.left_unfinished()
        return settings, worked.changed

    async def work(self, business_id: str, holder: str) -> Worked:
        """Work the business's re-classification as `holder`, page after page,
        until it is finished or another holder has it."""
        changed = 0
        while True:
            # Pages wait for room in the writer's queue like any client's
            # write: under back-pressure ingest goes first.
            step = await self.store.write(sbots.reclassify_step(business_id, holder, HOLD_US))
            changed += step.changed
            if step.done or step.held_elsewhere:
                return Worked(changed, step.done)

    async def finish_pending(self, holder: str) -> Round:
        """One background round as `holder`: every pending re-classification
        that no other worker holds, finished."""
        done = Round()
        after = ""
        while True:
            page = await self.store.read(sbots.pending, after, _PENDING_PER_PAGE)
            for found in page:
                if found.holder != holder and found.held_until > time.time_ns() // 1000:
                    done.held_until = min(done.held_until or found.held_until, found.held_until)
                    continue
                try:
                    worked = await self.work(found.business_id, holder)
                except asyncio.CancelledError:
                    await self._let_go(found.business_id, holder, wake=False)
                    raise
                except Exception:  # the next round (or another server's) takes it up again
                    log.exception("re-classification of the stored clicks of business %s failed", found.business_id)
                    await self._let_go(found.business_id, holder, wake=False)
                    done.failed += 1
                    continue
                done.changed += worked.changed
                done.finished += worked.finished
            if len(page) < _PENDING_PER_PAGE:
                break
            after = page[-1].business_id
        return done

    async def _let_go(self, business_id: str, holder: str, *, wake: bool = True) -> None:
        with contextlib.suppress(Exception):
            await self.store.write(sbots.let_go(business_id, holder))
        if wake:
            self.left_unfinished()
