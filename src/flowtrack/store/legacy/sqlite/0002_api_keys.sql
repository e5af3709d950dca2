-- flowtrack schema, version 2: API keys. Only the SHA-256 of a key is kept
-- (see domain/keys.py for why a fast hash is right for random keys).

CREATE TABLE api_keys (
  key_id       TEXT PRIMARY KEY,     -- the public part of ftk_<key_id>_<secret>
  business_id  TEXT NOT NULL,        -- the tenant every call with this key acts for
  name         TEXT NOT NULL DEFAULT '',
  scopes       TEXT NOT NULL,        -- comma separated: admin, ingest, read
  hash         BLOB NOT NULL,        -- sha256 of the whole key
  created_at   INTEGER NOT NULL,     -- µs since the epoch
  revoked_at   INTEGER,              -- NULL while the key is valid
  last_used_at INTEGER               -- updated at most once a minute
);
CREATE INDEX api_keys_by_business ON api_keys (business_id, created_at);
