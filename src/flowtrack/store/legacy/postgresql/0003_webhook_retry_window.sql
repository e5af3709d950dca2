-- flowtrack schema for PostgreSQL, version 3: the same columns and meanings
-- as SQLite's migration 0009 (a redelivered webhook message starts a new
-- retry window); see store/migrations/.
ALTER TABLE webhook_messages ADD COLUMN retry_since BIGINT;
ALTER TABLE webhook_messages ADD COLUMN retry_offset INTEGER NOT NULL DEFAULT 0;
