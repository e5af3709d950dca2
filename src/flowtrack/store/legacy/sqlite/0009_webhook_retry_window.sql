-- flowtrack schema, version 9: a redelivered webhook message starts a new
-- retry window. retry_since is when its current window began (NULL: at
-- create_time, as before); retry_offset is how many attempts were made
-- before it (the backoff starts again from the first delay).
ALTER TABLE webhook_messages ADD COLUMN retry_since INTEGER;
ALTER TABLE webhook_messages ADD COLUMN retry_offset INTEGER NOT NULL DEFAULT 0;
