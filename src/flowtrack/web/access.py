"""Who an HTTP request is: a session cookie, a Bearer key, or open mode.

- A person signs in with an API key (POST /signin). The server records a
  session in the database (store/sessions.py) and answers with a session
  cookie `flowtrack_session` (HttpOnly, SameSite=Strict, Secure under TLS)
  holding the session's random id, the key's *id* and an expiry, signed with
  HMAC-SHA256 by a secret derived from the database's token key (so sessions
  outlive a restart). The key itself never goes into the cookie. Each
  request looks the session and the key up again: a sign-out (POST
  /signout, which deletes the session's row) ends the session on every
  replica at once, even for a copy of the cookie taken before; a revoked
  key ends its sessions at once.
- A program sends `Authorization: Bearer KEY` (checked by the same
  Authenticator as gRPC calls).
- Open mode as over gRPC (api/auth.py): only while no API key exists and
  both the gRPC and the HTTP listener are on loopback addresses; a request
  without credentials then runs as business "default" with every scope.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from flowtrack.core.auth import Authenticator, end_session, open_session, session_record
from flowtrack.domain import errors
from flowtrack.domain.keys import Principal, Scope, allows
from flowtrack.store.base import Store

COOKIE = "flowtrack_session"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Sessions:
    """Signs and checks session cookies."""

    secret: bytes
    seconds: float

    @classmethod
    def for_store(cls, store: Store, seconds: float) -> Sessions:
        return cls(hmac.new(store.token_key, b"flowtrack http session v1", hashlib.sha256).digest(), seconds)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, key_id: str, now: float | None = None, session_id: str | None = None) -> str:
        """A cookie for session `session_id` (a new random id if None) of key
        `key_id`. It is good only while the session's row exists (`Access`)."""
        expires = int((now or time.time()) + self.seconds)
        payload = {"s": session_id or new_session_id(), "k": key_id, "e": expires}
        encoded = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{encoded}.{self._sign(encoded)}"

    def read(self, cookie: str, now: float | None = None) -> tuple[str, str] | None:
        """(session id, key id) of a well-signed, unexpired cookie; None otherwise."""
        payload, _, signature = cookie.partition(".")
        if not payload or not cookie.isascii():  # compare_digest refuses non-ASCII text
            return None
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(data, dict) or not all(
            isinstance(data.get(name), kind) for name, kind in (("s", str), ("k", str), ("e", int))
        ):
            return None  # also a cookie of a version before sessions were recorded: sign in again
        if data["e"] <= (now or time.time()):
            return None
        return str(data["s"]), str(data["k"])


def new_session_id() -> str:
    return _b64(secrets.token_bytes(18))


_ENDED = "the session ended (signed out, expired, or its key was revoked): sign in again"


class Access:
    """Finds the principal of a request."""

    def __init__(self, store: Store, authenticator: Authenticator, sessions: Sessions) -> None:
        self.store = store
        self.authenticator = authenticator
        self.sessions = sessions

    async def principal(self, request: HTTPConnection) -> Principal:
        """The caller; UNAUTHENTICATED (raised as a domain error) if none."""
        header = request.headers.get("authorization")
        if header is not None:
            return await self.authenticator.authenticate([("authorization", header)])
        cookie = request.cookies.get(COOKIE)
        if cookie:
            session = self.sessions.read(cookie)
            record = None
            if session is not None:
                session_id, key_id = session
                record = await session_record(self.store, session_id, key_id)
            if record is None or record.revoked_at is not None:
                raise errors.Unauthenticated(_ENDED, reason="SESSION_EXPIRED")
            return Principal(record.business_id, record.scopes, record.key_id)
        return await self.authenticator.authenticate([])

    async def sign_in(self, key: str) -> tuple[Principal, str]:
        """Check a key typed into the sign-in form; (principal, cookie value)."""
        if not key.strip():
            raise errors.Unauthenticated("type an API key", reason="NO_CREDENTIALS")
        principal = await self.authenticator.authenticate([("authorization", f"Bearer {key.strip()}")])
        if not allows(principal.scopes, Scope.READ) or principal.key_id is None:
            raise errors.PermissionDenied(
                "this key cannot read reports: sign in with a key that has the read (or admin) scope",
                reason="MISSING_SCOPE",
            )
        key_id = principal.key_id
        session_id = new_session_id()
        now = time.time()
        await open_session(self.store, session_id, key_id, now, self.sessions.seconds)
        return principal, self.sessions.issue(key_id, now, session_id)

    async def sign_out(self, cookie: str | None) -> None:
        """End the cookie's session for every copy of the cookie, on every server."""
        session = self.sessions.read(cookie) if cookie else None
        if session is not None:
            session_id = session[0]
            await end_session(self.store, session_id)
