"""Who is calling: the business of an RPC comes from its credentials (tenants are
sealed), never from the request body.

The server interceptor (api/gate.py, with api/auth.py) checks the caller's
API key and binds the caller's `Principal` in a context variable for the
call's task; tasks the method starts inherit it. `business_of(context)` reads it. A servicer
reached without the interceptor has no principal and fails closed
(UNAUTHENTICATED), never falling back to some business.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

import grpc

from flowtrack.core.calls import Call
from flowtrack.domain import errors
from flowtrack.domain.keys import Principal

_principal: ContextVar[Principal | None] = ContextVar("flowtrack_principal", default=None)


def business_of(context: grpc.aio.ServicerContext) -> str:
    """The business the caller is authenticated as."""
    return principal_of(context).business_id


def principal_of(context: grpc.aio.ServicerContext) -> Principal:
    """The caller: business, scopes, key id."""
    principal = _principal.get()
    if principal is None:
        raise errors.Unauthenticated("this call carries no verified credentials", reason="NO_CREDENTIALS")
    return principal


def call_of(context: grpc.aio.ServicerContext) -> Call:
    """The core's Call for this RPC: its caller, ended when the RPC ends
    (answered, cancelled, past its deadline)."""
    call = Call(principal_of(context))
    context.add_done_callback(lambda _context: call.end())
    return call


def set_principal(principal: Principal | None) -> Token[Principal | None]:
    """Bind the caller for the current task (the auth interceptor does this);
    returns a token for `reset_principal`."""
    return _principal.set(principal)


def reset_principal(token: Token[Principal | None]) -> None:
    _principal.reset(token)
