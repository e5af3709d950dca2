"""Reports delivered: the server's background tasks that send
webhooks from the outbox, complete quiet campaigns, and make report runs.
Their writes are core operations (core/background.py, core/schedules.py,
core/webhooks.py)."""
