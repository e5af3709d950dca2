"""The background tasks' own writes (delivery/ calls them): campaign
completion inside the writer's transactions, the quiet-period sweep, and
`bookkeeping`, the way every background job is written; `cancelled`, the
way every background task ends. The report runs'
lease and claims are in core/schedules.py, the outbox sends in
core/webhooks.py; both write through `bookkeeping`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeVar

from flowtrack.store import completion
from flowtrack.store.base import Store
from flowtrack.store.completion import CompletionHook
from flowtrack.store.writer import Job

__all__ = ["CompletionHook", "bookkeeping", "install_completion", "sweep_quiet"]

T = TypeVar("T")


async def bookkeeping(store: Store, job: Job[T]) -> T:
    """Run one of the background tasks' writer jobs. They are a few small
    jobs a second, not client load: they do not take room in the queue's
    bound (`admitted`), so they never hold a row a client is waiting for."""
    return await store.write(job, admitted=True)


def install_completion(store: Store, default_quiet_us: int) -> CompletionHook:
    """Campaign completion inside the writer's transactions (install it
    before any job runs); `default_quiet_us` is the server's quiet period."""
    hook = CompletionHook(default_quiet_us)
    store.writer.before_commit(hook)
    return hook


async def sweep_quiet(store: Store, default_quiet_us: int) -> int:
    """Complete the open campaigns that have had no event for their quiet
    period (a batch of them); how many."""
    return await bookkeeping(store, completion.sweep_quiet(default_quiet_us))


async def cancelled(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task (if started) and wait for it to end."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
