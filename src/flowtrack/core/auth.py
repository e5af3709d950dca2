"""Who calls: API keys checked against the store, for every face.

`Authenticator` checks a call's API key (constant time, domain/keys.py)
and caches checked keys for `key_cache_seconds` (the longest a revoked key
still opens new calls); look-ups run on the store's own small key pool
(`Store.read_keys`). Open mode: while the api_keys table is empty *and*
the listener is on a loopback address, a call without a key runs as
business "default" with every scope; the first key created ends it within
`key_cache_seconds`, without a restart. Keys with open streams are looked up
again every `key_cache_seconds` (`watching`), so those streams can end when
their key is revoked.

`StreamQuota` counts each key's open streams (`--max-streams-per-key`),
gRPC streams and the page's live stats together.

The sign-in sessions of the HTTP face are kept in the store
(`open_session`, `session_record`, `end_session`), so that a sign-out on
one replica ends the session on every one.

The gRPC face applies them in its interceptor (api/gate.py, api/auth.py);
the HTTP face in web/access.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from flowtrack.domain import errors
from flowtrack.domain.keys import ALL_SCOPES, KeyRecord, Principal, key_id_of
from flowtrack.domain.times import now_us
from flowtrack.store import keys as stored_keys
from flowtrack.store import sessions as stored_sessions
from flowtrack.store.base import Store

log = logging.getLogger(__name__)

# The business of open mode (no keys in the database, loopback listener).
DEFAULT_BUSINESS = "default"

# Stop caching more keys than this (a flood of made-up key ids): start over.
_MAX_CACHED = 10_000
# Keys with open streams are looked up again at most this often, even with
# key_cache_seconds 0 (which checks every new call).
_MIN_RECHECK_SECONDS = 0.1
# last_used_at is written at most this often per key, in µs.
_TOUCH_EVERY_US = 60_000_000


def credentials_of(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The API key a call carries, or None. Two different keys, or a malformed
    header, are UNAUTHENTICATED."""
    found: set[str] = set()
    for key, value in metadata or ():
        if key not in ("authorization", "x-api-key"):
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        text = text.strip()
        if key == "authorization":
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise errors.Unauthenticated(
                    "the authorization header must be 'Bearer <API key>'", reason="MALFORMED_CREDENTIALS"
                )
            text = token.strip()
        found.add(text)
    if len(found) > 1:
        raise errors.Unauthenticated("the call carries more than one API key", reason="MALFORMED_CREDENTIALS")
    return found.pop() if found else None


@dataclass
class _Watched:
    """A key with open streams: set `revoked` ends them."""

    revoked: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0


# The authenticator and key of the current call (set by `authenticate` in the
# call's task, like the principal), for `ends_when_revoked`.
_caller: ContextVar[tuple[Authenticator, str] | None] = ContextVar("flowtrack_caller_key", default=None)


@dataclass
class _Cached:
    expires: float  # time.monotonic()
    record: KeyRecord | None


class Authenticator:
    """Checks API keys against the database, with a short cache."""

    def __init__(self, store: Store, *, loopback: bool, cache_seconds: float) -> None:
        self.store = store
        self.loopback = loopback
        self.cache_seconds = cache_seconds
        self._keys: dict[str, _Cached] = {}
        self._loading: dict[str, asyncio.Task[KeyRecord | None]] = {}
        self._keys_exist: bool | None = None
        self._keys_checked = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._watched: dict[str, _Watched] = {}
        self._rechecker: asyncio.Task[None] | None = None
        self.open_mode = False

    async def start(self) -> str:
        """Decide the mode; returns the line to log."""
        self._keys_exist = await self.store.read_keys(stored_keys.any_keys)
        self._keys_checked = time.monotonic()
        self.open_mode = self.loopback and not self._keys_exist
        if self.open_mode:
            return (
                "OPEN MODE: no API keys exist and the server listens on loopback, so calls without a key run as "
                f"business {DEFAULT_BUSINESS!r} with every scope; `flowtrack keys create` ends open mode"
            )
        if not self._keys_exist:
            return (
                "API keys required, but none exist yet: every call except health and reflection is refused "
                "until you run `flowtrack keys create`"
            )
        return "API keys required"

    async def _any_keys(self) -> bool:
        if self._keys_exist:
            return True  # keys are never deleted, only revoked
        if time.monotonic() - self._keys_checked > self.cache_seconds:
            self._keys_exist = await self.store.read_keys(stored_keys.any_keys)
            self._keys_checked = time.monotonic()
            if self._keys_exist and self.open_mode:
                self.open_mode = False
                log.warning("open mode ended: API keys exist now, every call needs one")
        return bool(self._keys_exist)

    async def authenticate(self, metadata: Sequence[tuple[str, Any]] | None) -> Principal:
        token = credentials_of(metadata)
        if token is None:
            if self.loopback and not await self._any_keys():
                return Principal(DEFAULT_BUSINESS, ALL_SCOPES, None)
            raise errors.Unauthenticated(
                "an API key is required: send 'authorization: Bearer <key>' or 'x-api-key: <key>'",
                reason="NO_CREDENTIALS",
            )
        key_id = key_id_of(token)
        record = await self._record(key_id) if key_id else None
        if record is None or not record.matches(token):
            raise errors.Unauthenticated("the API key is not valid", reason="INVALID_API_KEY")
        if record.revoked_at is not None:
            raise errors.Unauthenticated(f"the API key {record.key_id} was revoked", reason="REVOKED_API_KEY")
        _caller.set((self, record.key_id))
        return Principal(record.business_id, record.scopes, record.key_id)

    # -- open streams of a key ------------------------------------------------------
    @contextlib.contextmanager
    def watching(self, key_id: str) -> Any:
        """While the block runs, look `key_id` up every `cache_seconds`; the
        event it yields is set once the key is revoked (or gone)."""
        watched = self._watched.setdefault(key_id, _Watched())
        watched.streams += 1
        if self._rechecker is None or self._rechecker.done():
            self._rechecker = asyncio.get_running_loop().create_task(self._recheck())
        try:
            yield watched.revoked
        finally:
            watched.streams -= 1
            if watched.streams == 0 and self._watched.get(key_id) is watched:
                del self._watched[key_id]

    async def _recheck(self) -> None:
        """Look the watched keys up again, every `cache_seconds` (at least
        _MIN_RECHECK_SECONDS), while any are."""
        while self._watched:
            await asyncio.sleep(max(self.cache_seconds, _MIN_RECHECK_SECONDS))
            for key_id, watched in list(self._watched.items()):
                try:
                    record = await self.store.read_keys(stored_keys.get, key_id)
                except Exception as error:  # the database is busy or gone: try again next round
                    log.warning("cannot check API key %s again: %s", key_id, error)
                    continue
                self._keys[key_id] = _Cached(time.monotonic() + self.cache_seconds, record)
                if record is None or record.revoked_at is not None:
                    watched.revoked.set()

    async def _record(self, key_id: str) -> KeyRecord | None:
        cached = self._keys.get(key_id)
        if cached is not None and cached.expires > time.monotonic():
            return cached.record
        # One read per key id however many calls wait for it; the read runs in
        # its own task so that one caller giving up does not fail the others.
        task = self._loading.get(key_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key_id))
            self._loading[key_id] = task
            task.add_done_callback(lambda _task: self._loading.pop(key_id, None))
        try:
            return await asyncio.shield(task)
        except Exception as error:
            log.warning("cannot check API key %s: %s", key_id, error)
            raise errors.Unavailable("cannot check the API key right now; retry", reason="AUTH_UNAVAILABLE") from error

    async def _load(self, key_id: str) -> KeyRecord | None:
        record = await self.store.read_keys(stored_keys.get, key_id)
        if len(self._keys) >= _MAX_CACHED:
            self._keys.clear()
        self._keys[key_id] = _Cached(time.monotonic() + self.cache_seconds, record)
        if record is not None and record.revoked_at is None:
            self._touch(record)
        return record

    def _touch(self, record: KeyRecord) -> None:
        """Record when the key was used (at most once a minute, in the background)."""
        now = now_us()
        if record.last_used_at is not None and now - record.last_used_at < _TOUCH_EVERY_US:
            return

        async def touch() -> None:
            try:
                await self.store.write(lambda tx: stored_keys.touch(tx.conn, record.key_id, tx.now_us))
            except Exception:  # shutting down, or the database is busy: last_used_at is best effort
                log.debug("could not record last use of key %s", record.key_id, exc_info=True)

        task = asyncio.get_running_loop().create_task(touch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._rechecker is not None:
            self._rechecker.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def current_key() -> tuple[Authenticator, str] | None:
    """The authenticator and key id of the current call (bound by
    `authenticate` in the call's task); None in open mode or outside a call."""
    return _caller.get()


class StreamQuota:
    """Open server streams per API key (per business for calls without a
    key, in open mode), over gRPC and the HTTP listener's live stats
    together, so that one key cannot take every stream the server holds."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no cap
        self.open: collections.Counter[str] = collections.Counter()

    @staticmethod
    def holder(principal: Principal) -> str:
        if principal.key_id is not None:
            return f"api_key:{principal.key_id}"
        return f"business:{principal.business_id}"

    def take(self, principal: Principal) -> Callable[..., None]:
        """Count one more open stream of `principal`'s key; returns the
        function that gives it back (once, however often it is called).
        QuotaExceeded (RESOURCE_EXHAUSTED, reason TOO_MANY_STREAMS) if the
        key holds `limit` already."""
        holder = self.holder(principal)
        if self.limit and self.open[holder] >= self.limit:
            whose = f"API key {principal.key_id}" if principal.key_id else f"business {principal.business_id!r}"
            raise errors.QuotaExceeded(
                f"the {whose} holds {self.limit} open streams, the most one key may hold"
                " (--max-streams-per-key): close one first",
                subject=holder,
                description=f"open streams per API key: at most {self.limit}",
                reason="TOO_MANY_STREAMS",
            )
        self.open[holder] += 1
        given_back = False

        def give_back(*_: object) -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            self.open[holder] -= 1
            if self.open[holder] <= 0:
                del self.open[holder]

        return give_back

    def take_for_task(self, principal: Principal) -> None:
        """`take`, given back when the running task ends (a gRPC call's task)."""
        give_back = self.take(principal)
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - grpc.aio always runs interceptors in a task
            give_back()
            return
        task.add_done_callback(give_back)


# -- sign-in sessions (the HTTP face's cookies) ---------------------------------------------


async def open_session(store: Store, session_id: str, key_id: str, now: float, seconds: float) -> None:
    """Record a sign-in session of `key_id` lasting `seconds` from `now` (Unix seconds)."""
    await store.write(
        lambda tx: stored_sessions.create(tx.conn, session_id, key_id, int(now * 1e6), int((now + seconds) * 1e6))
    )


async def session_record(store: Store, session_id: str, key_id: str) -> KeyRecord | None:
    """The key record of a session that is still on (not signed out, not
    expired) and belongs to `key_id`; None otherwise. A revoked key's record
    is returned too: the caller refuses it."""
    on = await store.read_keys(stored_sessions.key_of, session_id, now_us())
    if on != key_id:
        return None
    return await store.read_keys(stored_keys.get, key_id)


async def end_session(store: Store, session_id: str) -> None:
    """Sign out: the session ends on every server at once."""
    await store.write(lambda tx: stored_sessions.end(tx.conn, session_id))
