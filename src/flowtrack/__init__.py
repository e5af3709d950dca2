"""flowtrack: the execution tracker for flow-based messaging campaigns."""

__version__ = "0.1.0"
