"""Who is calling: the business of an RPC comes from its credentials (rule 6),
never from the request body.

Until API keys exist (the tenants issue), every call belongs to the default
business.
"""

from __future__ import annotations

import grpc

DEFAULT_BUSINESS = "default"


def business_of(context: grpc.aio.ServicerContext) -> str:
    """The business the caller is authenticated as."""
    return DEFAULT_BUSINESS
