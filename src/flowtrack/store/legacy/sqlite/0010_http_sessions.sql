-- flowtrack schema, version 9: sign-in sessions of the HTTP listener
-- (store/sessions.py). A row lives from sign-in to sign-out (deleted) or
-- its expiry; a cookie whose session has no row is refused.

CREATE TABLE http_sessions (
  session_id TEXT PRIMARY KEY,   -- random, signed into the cookie
  key_id     TEXT NOT NULL,      -- the API key signed in with (looked up again on each request)
  created_at INTEGER NOT NULL,   -- µs since the epoch
  expires_at INTEGER NOT NULL    -- µs since the epoch
);
CREATE INDEX http_sessions_by_expiry ON http_sessions (expires_at);
