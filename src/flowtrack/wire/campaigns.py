"""CampaignService's protos to domain values and back (the gRPC face and the
HTTP face's JSON share them). Pure conversion: domain and stubs only."""

from __future__ import annotations

from flowtrack.domain import campaigns as rules
from flowtrack.domain.errors import Violation
from flowtrack.domain.model import Campaign, CampaignSource, Recipient
from flowtrack.v1 import campaign_pb2, common_pb2
from flowtrack.wire.convert import duration_to_us, us_to_duration, us_to_ts


def campaign_to_proto(campaign: Campaign) -> campaign_pb2.Campaign:
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
        source=source_to_proto(campaign.source),
    )


def source_to_proto(source: CampaignSource | None) -> campaign_pb2.CampaignSource | None:
    if source is None:
        return None
    return campaign_pb2.CampaignSource(campaign_id=source.campaign_id, segment=source.segment)


def draft_of(message: campaign_pb2.Campaign) -> rules.CampaignDraft:
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
        source=(
            CampaignSource(message.source.campaign_id, message.source.segment) if message.HasField("source") else None
        ),
    )


def recipient_of(message: campaign_pb2.Recipient) -> Recipient:
    return Recipient(
        recipient=message.recipient,
        channel=message.channel,
        variant=message.variant,
        input_variables=dict(message.input_variables),
    )


def list_response(campaigns: list[Campaign], next_page_token: str) -> campaign_pb2.ListCampaignsResponse:
    return campaign_pb2.ListCampaignsResponse(
        campaigns=[campaign_to_proto(c) for c in campaigns], next_page_token=next_page_token
    )


def field_violations(violations: list[Violation]) -> list[common_pb2.FieldViolation]:
    return [common_pb2.FieldViolation(field=v.field, description=v.description, reason=v.reason) for v in violations]
