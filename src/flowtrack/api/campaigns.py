"""CampaignService: campaigns and their audiences.

Thin: reads the request into domain types (`_from_proto`), lets the domain
check it, runs the store's query or writer job, and writes the answer
(`_to_proto`). Domain errors become rich statuses in `handle_errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from flowtrack.api.base import Servicer
from flowtrack.api.context import business_of
from flowtrack.api.convert import duration_to_us, us_to_duration, us_to_ts
from flowtrack.api.errors import handle_errors
from flowtrack.config import Settings
from flowtrack.domain import campaigns as rules
from flowtrack.domain import tokens
from flowtrack.domain.errors import InvalidArgument, Violation, invalid
from flowtrack.domain.model import Campaign, Recipient
from flowtrack.store import campaigns as queries
from flowtrack.store.base import Store
from flowtrack.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2

_TOKEN_KIND = "campaigns"


def _to_proto(campaign: Campaign) -> campaign_pb2.Campaign:
    return campaign_pb2.Campaign(
        id=campaign.campaign_id,
        name=campaign.name,
        flow_id=campaign.flow_id,
        channels=list(campaign.channels),
        state=int(campaign.state),  # type: ignore[arg-type]
        labels=campaign.labels,
        create_time=us_to_ts(campaign.create_time),
        schedule_time=us_to_ts(campaign.schedule_time),
        start_time=us_to_ts(campaign.start_time),
        complete_time=us_to_ts(campaign.complete_time),
        update_time=us_to_ts(campaign.update_time),
        implicit=campaign.implicit,
        recipient_count=campaign.recipient_count,
        quiet_period=None if campaign.quiet_period_us is None else us_to_duration(campaign.quiet_period_us),
    )


def _from_proto(message: campaign_pb2.Campaign) -> rules.CampaignDraft:
    """The fields a client may set; output-only ones are ignored."""
    schedule = message.schedule_time
    return rules.CampaignDraft(
        campaign_id=message.id,
        name=message.name,
        flow_id=message.flow_id,
        channels=tuple(message.channels),
        state=int(message.state),
        labels=dict(message.labels),
        schedule_time=(schedule.seconds, schedule.nanos) if message.HasField("schedule_time") else None,
        quiet_period_us=duration_to_us(message.quiet_period) if message.HasField("quiet_period") else None,
    )


def _recipient(message: campaign_pb2.Recipient) -> Recipient:
    return Recipient(
        recipient=message.recipient,
        channel=message.channel,
        variant=message.variant,
        input_variables=dict(message.input_variables),
    )


class CampaignServicer(Servicer, campaign_pb2_grpc.CampaignServiceServicer):
    def __init__(self, store: Store, settings: Settings, *, reports_dir: Path | None = None) -> None:
        super().__init__(store, settings)
        self.reports_dir = reports_dir  # where report run files are (delivery/setup.py reports_dir)

    @handle_errors
    async def CreateCampaign(
        self, request: campaign_pb2.CreateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.CreateCampaignResponse:
        if not request.HasField("campaign"):
            raise invalid("campaign", "is required", "REQUIRED")
        draft = _from_proto(request.campaign)
        rules.check_create(draft)
        campaign = await self.store.write(queries.create(business_of(context), draft))
        return campaign_pb2.CreateCampaignResponse(campaign=_to_proto(campaign))

    @handle_errors
    async def GetCampaign(
        self, request: campaign_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.GetCampaignResponse:
        campaign_id = rules.require_id(request.campaign_id, "campaign_id")
        campaign = await self.store.read(queries.get, business_of(context), campaign_id)
        return campaign_pb2.GetCampaignResponse(campaign=_to_proto(campaign))

    @handle_errors
    async def UpdateCampaign(
        self, request: campaign_pb2.UpdateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.UpdateCampaignResponse:
        if not request.HasField("campaign"):
            raise invalid("campaign", "is required", "REQUIRED")
        draft = _from_proto(request.campaign)
        paths = rules.update_paths(request.update_mask.paths)
        rules.check_update(draft, paths, explicit_mask=bool(request.update_mask.paths))
        business_id = business_of(context)
        campaign = await self.store.write(queries.update(business_id, draft, paths))
        # The job saw the counters as of its transaction; read the committed count.
        count = await self.store.read(queries.audience_size, business_id, campaign.campaign_id)
        proto = _to_proto(campaign)
        proto.recipient_count = count
        return campaign_pb2.UpdateCampaignResponse(campaign=proto)

    @handle_errors
    async def DeleteCampaign(
        self, request: campaign_pb2.DeleteCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.DeleteCampaignResponse:
        campaign_id = rules.require_id(request.campaign_id, "campaign_id")
        deleted = await self.store.write(queries.delete(business_of(context), campaign_id))
        # Its report runs went with it (their links answer 410): their files go too.
        if self.reports_dir is not None:
            for path in deleted.files:
                await asyncio.to_thread((self.reports_dir / path).unlink, missing_ok=True)
        return campaign_pb2.DeleteCampaignResponse(deleted_recipients=deleted.recipients, deleted_events=deleted.events)

    @handle_errors
    async def ListCampaigns(
        self, request: campaign_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.ListCampaignsResponse:
        business_id = business_of(context)
        size = rules.page_size(request.page_size)
        where = rules.parse_filter(request.filter)
        bound = tokens.bind(business_id, where.canonical())
        after: tuple[int, int] | None = None
        if request.page_token:
            position = tokens.decode(self.store.token_key, _TOKEN_KIND, bound, request.page_token, field="page_token")
            time, cid = position.get("t"), position.get("c")
            if not isinstance(time, int) or not isinstance(cid, int):
                raise invalid("page_token", "not a token returned by this server", "BAD_TOKEN")
            after = (time, cid)
        rows = await self.store.read(queries.list_page, business_id, where, after, size + 1)
        reply = campaign_pb2.ListCampaignsResponse(campaigns=[_to_proto(c) for _, c in rows[:size]])
        if len(rows) > size:
            cid, last = rows[size - 1]
            reply.next_page_token = tokens.encode(
                self.store.token_key, _TOKEN_KIND, bound, {"t": last.create_time, "c": cid}
            )
        return reply

    @handle_errors
    async def AddRecipients(
        self, request_iterator: AsyncIterator[campaign_pb2.AddRecipientsRequest], context: grpc.aio.ServicerContext
    ) -> campaign_pb2.AddRecipientsResponse:
        business_id = business_of(context)
        campaign_id = ""
        added = already_present = invalid_count = 0
        violations: list[Violation] = []
        batch = -1
        async for request in request_iterator:
            batch += 1
            if batch == 0:
                campaign_id = rules.require_id(request.campaign_id, "requests[0].campaign_id")
                # NOT_FOUND before any work, not only at the first write.
                await self.store.read(queries.get, business_id, campaign_id)
            elif request.campaign_id and request.campaign_id != campaign_id:
                raise invalid(
                    f"requests[{batch}].campaign_id",
                    f"must be empty or {campaign_id!r} like the first message",
                    "CAMPAIGN_MISMATCH",
                )
            if len(request.recipients) > rules.RECIPIENTS_PER_BATCH:
                raise invalid(
                    f"requests[{batch}].recipients",
                    f"has more than {rules.RECIPIENTS_PER_BATCH} recipients",
                    "TOO_MANY",
                )
            valid: list[Recipient] = []
            for i, message in enumerate(request.recipients):
                recipient = _recipient(message)
                wrong = rules.check_recipient(recipient)
                if wrong:
                    invalid_count += 1
                    room = rules.MAX_VIOLATIONS - len(violations)
                    violations.extend(v.under(f"requests[{batch}].recipients[{i}]") for v in wrong[:room])
                else:
                    valid.append(recipient)
            if valid:
                new, present = await self.store.write(
                    queries.add_recipients(business_id, campaign_id, valid), rows=len(valid)
                )
                added += new
                already_present += present
        if batch < 0:
            raise InvalidArgument([Violation("requests[0].campaign_id", "is required", "REQUIRED")])
        total = await self.store.read(queries.audience_size, business_id, campaign_id)
        return campaign_pb2.AddRecipientsResponse(
            added=added,
            already_present=already_present,
            total=total,
            invalid=invalid_count,
            violations=[
                common_pb2.FieldViolation(field=v.field, description=v.description, reason=v.reason) for v in violations
            ],
        )
