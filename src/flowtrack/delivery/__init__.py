"""Reports delivered (issue 14): the server's background tasks that send
webhooks from the outbox, complete quiet campaigns, and make report runs."""
