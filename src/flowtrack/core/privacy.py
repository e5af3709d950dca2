"""Erasing a recipient (PrivacyService): the use cases over store/privacy.py.

`erase` drives the erasure's writer jobs: `begin` (from its commit on the
recipient's events are refused), then `step`s of at most
store.privacy.STEP_ROWS rows each, with ingest running between them, the
report run files of the campaigns that held the recipient deleted, the
database files scrubbed (`settle`), and `finish`. Called again for a
recipient whose erasure stopped half-way (a restart), it finishes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from flowtrack.core.calls import Call
from flowtrack.domain import privacy as rules
from flowtrack.domain import tokens
from flowtrack.domain.campaigns import page_size
from flowtrack.domain.errors import NotFound, invalid
from flowtrack.domain.privacy import Erasure
from flowtrack.store import privacy as queries
from flowtrack.store.base import Store

log = logging.getLogger(__name__)

_TOKEN_KIND = "erasures"


class Privacy:
    def __init__(self, store: Store, *, reports_dir: Path | None = None) -> None:
        self.store = store
        self.reports_dir = reports_dir  # where report run files are (delivery/setup.py reports_dir)

    async def erase(self, call: Call, recipient: str) -> Erasure:
        recipient = rules.require_recipient(recipient)
        business_id = call.business_id
        earlier = await self.store.read(queries.find, business_id, recipient)
        if earlier is not None and earlier.complete_time is not None:
            return earlier
        if earlier is None and not await self.store.read(queries.holding, business_id, recipient):
            raise NotFound("this business holds nothing of that recipient", reason="RECIPIENT_NOT_FOUND")
        erasure = await self.store.write(queries.begin(business_id, recipient, call.principal.key_id or ""))
        # Read after `begin` committed: no campaign can take the recipient from now on.
        held = await self.store.read(queries.holding, business_id, recipient)
        steps, longest, started = 0, 0.0, time.perf_counter()
        while held:
            stepped = await self.store.write(queries.step(business_id, recipient, erasure.erasure_id, held))
            longest = max(longest, stepped.seconds)
            log.debug("erasure %s: a step held the writer %.2f ms", erasure.erasure_id, stepped.seconds * 1000)
            steps += 1
            held = held[stepped.done :]
            await self._delete_files(stepped.files)
        stepped_at = time.perf_counter()
        settled = await queries.settle(self.store)
        settling = time.perf_counter() - stepped_at
        done = await self.store.write(queries.finish(business_id, erasure.erasure_id))
        log.info(
            "erasure %s of business %s: %s rows in %d steps (the longest held the writer %.1f ms), %.2f s in all"
            " (%.2f s cleaning the database files)%s",
            done.erasure_id, business_id, sum(done.rows.values()), steps, longest * 1000,
            time.perf_counter() - started, settling, "" if settled else "; the WAL is not checkpointed yet (readers)",
        )  # fmt: skip
        return done

    async def _delete_files(self, paths: list[str]) -> None:
        if self.reports_dir is None:
            return
        for path in paths:
            await asyncio.to_thread((self.reports_dir / path).unlink, missing_ok=True)

    async def list_page(self, call: Call, size: int, page_token: str) -> tuple[list[Erasure], str]:
        """A page of the business's erasures, newest first, and the next page's token."""
        business_id = call.business_id
        limit = page_size(size)
        bound = tokens.bind(business_id)
        after: tuple[int, str] | None = None
        if page_token:
            position = tokens.decode(self.store.token_key, _TOKEN_KIND, bound, page_token, field="page_token")
            time_, erasure_id = position.get("t"), position.get("e")
            if not isinstance(time_, int) or not isinstance(erasure_id, str):
                raise invalid("page_token", "not a token returned by this server", "BAD_TOKEN")
            after = (time_, erasure_id)
        found = await self.store.read(queries.page, business_id, after, limit + 1)
        token = ""
        if len(found) > limit:
            last = found[limit - 1]
            position = {"t": last.create_time, "e": last.erasure_id}
            token = tokens.encode(self.store.token_key, _TOKEN_KIND, bound, position)
        return found[:limit], token
