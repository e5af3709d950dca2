"""flowtrack: the execution tracker for flow-based messaging campaigns."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flowtrack.channel import client_channel as client_channel


def __getattr__(name: str) -> object:
    # `flowtrack.client_channel` without importing grpc for `flowtrack --version`.
    if name == "client_channel":
        from flowtrack.channel import client_channel

        return client_channel
    raise AttributeError(f"module 'flowtrack' has no attribute {name!r}")
