"""The campaign use cases: create, read, update, delete, list, and add an
audience. Each takes a `Call` (core/calls.py) and domain values,
and returns domain results or raises domain errors; everything is scoped to
the caller's business."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flowtrack.core.calls import Call
from flowtrack.domain import campaigns as rules
from flowtrack.domain import tokens
from flowtrack.domain.errors import InvalidArgument, Violation, invalid
from flowtrack.domain.model import Campaign, Recipient
from flowtrack.domain.privacy import REASON_ERASED
from flowtrack.store import campaigns as queries
from flowtrack.store import sources
from flowtrack.store.base import Store

_TOKEN_KIND = "campaigns"


@dataclass(frozen=True)
class Deleted:
    recipients: int
    events: int


@dataclass
class Added:
    """What AddRecipients did: counts, and the refused recipients' violations
    (at most rules.MAX_VIOLATIONS)."""

    added: int = 0
    already_present: int = 0
    total: int = 0
    invalid: int = 0
    violations: list[Violation] = field(default_factory=list)


class Campaigns:
    def __init__(self, store: Store, *, reports_dir: Path | None = None) -> None:
        self.store = store
        self.reports_dir = reports_dir  # where report run files are (delivery/setup.py reports_dir)

    async def create(self, call: Call, draft: rules.CampaignDraft) -> Campaign:
        rules.check_create(draft)
        return await self.store.write(queries.create(call.business_id, draft))

    async def get(self, call: Call, campaign_id: str) -> Campaign:
        campaign_id = rules.require_id(campaign_id, "campaign_id")
        campaign = await self.store.read(queries.get, call.business_id, campaign_id)
        return (await self.with_sources(call, [campaign]))[0]

    async def with_sources(self, call: Call, found: list[Campaign]) -> list[Campaign]:
        """The campaigns with their source (a segment of another campaign), if any."""
        if not found:
            return found
        known = await self.store.read(sources.sources, call.business_id, [c.campaign_id for c in found])
        return [dataclasses.replace(c, source=known[c.campaign_id]) if c.campaign_id in known else c for c in found]

    async def update(self, call: Call, draft: rules.CampaignDraft, mask: Sequence[str]) -> Campaign:
        paths = rules.update_paths(mask)
        rules.check_update(draft, paths, explicit_mask=bool(mask))
        business_id = call.business_id
        campaign = await self.store.write(queries.update(business_id, draft, paths))
        # The job saw the counters as of its transaction; read the committed count.
        count = await self.store.read(queries.audience_size, business_id, campaign.campaign_id)
        return (await self.with_sources(call, [dataclasses.replace(campaign, recipient_count=count)]))[0]

    async def delete(self, call: Call, campaign_id: str) -> Deleted:
        campaign_id = rules.require_id(campaign_id, "campaign_id")
        deleted = await self.store.write(queries.delete(call.business_id, campaign_id))
        # Its report runs went with it (their links answer 410): their files go too.
        if self.reports_dir is not None:
            for path in deleted.files:
                await asyncio.to_thread((self.reports_dir / path).unlink, missing_ok=True)
        return Deleted(deleted.recipients, deleted.events)

    async def list_page(
        self, call: Call, filter_text: str, page_size: int, page_token: str
    ) -> tuple[list[Campaign], str]:
        """A page of the caller's campaigns and the token of the next ("" at the end)."""
        business_id = call.business_id
        size = rules.page_size(page_size)
        where = rules.parse_filter(filter_text)
        bound = tokens.bind(business_id, where.canonical())
        after: tuple[int, int] | None = None
        if page_token:
            position = tokens.decode(self.store.token_key, _TOKEN_KIND, bound, page_token, field="page_token")
            time, cid = position.get("t"), position.get("c")
            if not isinstance(time, int) or not isinstance(cid, int):
                raise invalid("page_token", "not a token returned by this server", "BAD_TOKEN")
            after = (time, cid)
        rows = await self.store.read(queries.list_page, business_id, where, after, size + 1)
        token = ""
        if len(rows) > size:
            cid, last = rows[size - 1]
            token = tokens.encode(self.store.token_key, _TOKEN_KIND, bound, {"t": last.create_time, "c": cid})
        return await self.with_sources(call, [c for _, c in rows[:size]]), token

    async def add_recipients(self, call: Call, batches: AsyncIterator[tuple[str, list[Recipient]]]) -> Added:
        """Add the recipients of `batches` ((campaign_id, recipients) each; the
        first names the campaign, the others name it or nothing); invalid
        recipients are counted and skipped, the others written batch by batch."""
        business_id = call.business_id
        campaign_id = ""
        out = Added()
        batch = -1
        async for named, recipients in batches:
            batch += 1
            if batch == 0:
                campaign_id = rules.require_id(named, "requests[0].campaign_id")
                # NOT_FOUND before any work, not only at the first write.
                await self.store.read(queries.get, business_id, campaign_id)
            elif named and named != campaign_id:
                raise invalid(
                    f"requests[{batch}].campaign_id",
                    f"must be empty or {campaign_id!r} like the first message",
                    "CAMPAIGN_MISMATCH",
                )
            if len(recipients) > rules.RECIPIENTS_PER_BATCH:
                raise invalid(
                    f"requests[{batch}].recipients",
                    f"has more than {rules.RECIPIENTS_PER_BATCH} recipients",
                    "TOO_MANY",
                )
            valid: list[tuple[int, Recipient]] = []
            for i, recipient in enumerate(recipients):
                wrong = rules.check_recipient(recipient)
                if wrong:
                    out.invalid += 1
                    room = rules.MAX_VIOLATIONS - len(out.violations)
                    out.violations.extend(v.under(f"requests[{batch}].recipients[{i}]") for v in wrong[:room])
                else:
                    valid.append((i, recipient))
            if valid:
                new, present, erased = await self.store.write(
                    queries.add_recipients(business_id, campaign_id, [r for _, r in valid]), rows=len(valid)
                )
                out.added += new
                out.already_present += present
                for at in erased:  # erased recipients stay out (core/privacy.py)
                    out.invalid += 1
                    if len(out.violations) < rules.MAX_VIOLATIONS:
                        path = f"requests[{batch}].recipients[{valid[at][0]}].recipient"
                        out.violations.append(Violation(path, "was erased", REASON_ERASED))
        if batch < 0:
            raise InvalidArgument([Violation("requests[0].campaign_id", "is required", "REQUIRED")])
        out.total = await self.store.read(queries.audience_size, business_id, campaign_id)
        return out
