"""What every servicer shares."""

from __future__ import annotations

import grpc

from flowtrack.config import Settings
from flowtrack.store.store import Store


class Servicer:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings


async def unimplemented(context: grpc.aio.ServicerContext, what: str) -> None:
    """Abort with UNIMPLEMENTED: the RPC is in the contract, its behaviour is not built yet."""
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not implemented yet")
