"""A business's settings (SettingsService): read them, change them. A change
of the bot-click rules re-classifies the business's stored clicks before it
returns: store/bots.py's jobs, one per page of messages with a click, so the
writer is held a few milliseconds at a time and ingest goes on between
them. Each job classifies with the rules as committed when it runs, and
ingest after the change classifies with the new ones, so a change and
concurrent ingest end consistent (tests/test_bots.py)."""

from __future__ import annotations

from flowtrack.core.calls import Call, require
from flowtrack.domain.bots import BusinessSettings, SettingsChange
from flowtrack.domain.keys import Scope
from flowtrack.store import bots as sbots
from flowtrack.store.base import Store

__all__ = ["BusinessSettings", "Settings", "SettingsChange"]


class Settings:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, call: Call) -> BusinessSettings:
        require(call.principal, Scope.READ, "reading settings")
        return await self.store.read(sbots.get_settings, call.business_id)

    async def update(self, call: Call, change: SettingsChange) -> tuple[BusinessSettings, int]:
        """The settings after `change` (checked by the face: domain/bots.py),
        and how many stored clicks changed class or reason."""
        require(call.principal, Scope.ADMIN, "changing settings")
        settings, changed = await self.store.write(sbots.update_settings(call.business_id, change))
        return settings, (await self.reclassify(call.business_id) if changed else 0)

    async def reclassify(self, business_id: str) -> int:
        """Classify every stored click of the business again under its rules."""
        total = 0
        for cid in await self.store.read(sbots.campaign_keys, business_id):
            after = ""
            while True:
                after, changed = await self.store.write(sbots.reclassify_job(business_id, cid, after))
                total += changed
                if not after:
                    break
        return total
