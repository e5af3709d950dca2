-- flowtrack schema, version 5: per message, the key (attempt, rank,
-- occurred_at, event_id) of the event each attribute came from, as a JSON
-- object {"channel": [attempt, rank, occurred_at, event_id], ...}. With it an
-- event older than the message's current one folds in O(1) instead of a
-- re-fold of all the message's events. NULL on rows stored before: such a
-- message is re-folded once, the first time an older event could change it.
ALTER TABLE messages ADD COLUMN attr_keys TEXT;
