"""One use of the core: who asks, and whether they still listen.

Every face makes a `Call` for the work it asks of the core: the caller's
`Principal` (their business, scopes and key id; the face found it) and the
call's end. A face ends the call when its caller goes (a cancelled RPC, an
HTTP client that left, a report run stopped) or when the answer is complete;
the core's streams interrupt the query they are reading and close their
snapshot at that moment (`on_end`), and read no further page once `done()`.
"""

from __future__ import annotations

from collections.abc import Callable

from flowtrack.domain import errors
from flowtrack.domain.keys import Principal, Scope, allows


class Call:
    """A caller and the end of their call."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self._done = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def business_id(self) -> str:
        return self.principal.business_id

    def done(self) -> bool:
        """Whether the call is over (the caller went, or the answer is complete)."""
        return self._done

    def on_end(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the call ends (at once if it has)."""
        if self._done:
            callback()
        else:
            self._callbacks.append(callback)

    def end(self) -> None:
        """The call is over; idempotent."""
        if self._done:
            return
        self._done = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def require(principal: Principal, scope: Scope, what: str) -> None:
    """PERMISSION_DENIED (MISSING_SCOPE) unless `principal` holds `scope`
    (or admin); `what` names the operation in the message."""
    if not allows(principal.scopes, scope):
        have = ", ".join(sorted(s.value for s in principal.scopes)) or "none"
        raise errors.PermissionDenied(
            f"{what} needs an API key with scope {scope.value} (or admin); this key has: {have}",
            reason="MISSING_SCOPE",
        )
