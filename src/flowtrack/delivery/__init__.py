"""Reports delivered: the server's background tasks that send
webhooks from the outbox, complete quiet campaigns, and make report runs."""

from __future__ import annotations

from typing import TypeVar

from flowtrack.store.base import Store
from flowtrack.store.writer import Job

T = TypeVar("T")


async def bookkeeping(store: Store, job: Job[T]) -> T:
    """Run one of the background tasks' writer jobs. They are a few small
    jobs a second, not client load: they do not take room in the queue's
    bound (`admitted`), so they never hold a row a client is waiting for."""
    return await store.write(job, admitted=True)
