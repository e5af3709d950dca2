"""What every servicer shares."""

from __future__ import annotations

from flowtrack.config import Settings
from flowtrack.store.base import Store


class Servicer:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
