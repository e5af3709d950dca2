"""PrivacyService's messages to and from domain values."""

from __future__ import annotations

from flowtrack.domain.privacy import Erasure
from flowtrack.v1 import privacy_pb2
from flowtrack.wire.convert import us_to_ts


def erasure_to_proto(erasure: Erasure) -> privacy_pb2.Erasure:
    out = privacy_pb2.Erasure(
        id=erasure.erasure_id,
        key_id=erasure.key_id,
        create_time=us_to_ts(erasure.create_time),
        complete_time=us_to_ts(erasure.complete_time),
        campaigns=erasure.campaigns,
    )
    out.rows.update(erasure.rows)
    return out
