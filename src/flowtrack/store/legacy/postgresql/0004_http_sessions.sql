-- flowtrack schema for PostgreSQL, version 3: sign-in sessions of the HTTP
-- listener, as SQLite's migration 0009 (store/sessions.py): every replica
-- sees a sign-out at once.

CREATE TABLE http_sessions (
  session_id TEXT COLLATE "C" PRIMARY KEY,
  key_id     TEXT COLLATE "C" NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);
CREATE INDEX http_sessions_by_expiry ON http_sessions (expires_at);
