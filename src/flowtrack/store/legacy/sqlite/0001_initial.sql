-- flowtrack schema, version 1. Times are integer microseconds since the Unix
-- epoch (UTC); statuses and states are the numbers of the protos' enums.

-- One row per business: the last sequence handed out to its events.
CREATE TABLE businesses (
  business_id   TEXT PRIMARY KEY,
  last_sequence INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE campaigns (
  cid            INTEGER PRIMARY KEY,          -- internal key used by every other table
  business_id    TEXT NOT NULL,
  campaign_id    TEXT NOT NULL,
  name           TEXT NOT NULL DEFAULT '',
  flow_id        TEXT NOT NULL DEFAULT '',
  channels       TEXT NOT NULL DEFAULT '[]',   -- JSON array
  labels         TEXT NOT NULL DEFAULT '{}',   -- JSON object
  state          INTEGER NOT NULL,
  implicit       INTEGER NOT NULL DEFAULT 0,
  create_time    INTEGER NOT NULL,
  schedule_time  INTEGER,
  start_time     INTEGER,
  complete_time  INTEGER,
  update_time    INTEGER NOT NULL,
  first_event_at INTEGER,                      -- min occurred_at over its events
  last_event_at  INTEGER,                      -- max occurred_at over its events
  last_sequence  INTEGER NOT NULL DEFAULT 0,   -- sequence of the last event that touched it
  UNIQUE (business_id, campaign_id)
);
CREATE INDEX campaigns_by_time ON campaigns (business_id, create_time, cid);

-- One row per recipient of a campaign's audience: its audience entry (aud_*)
-- and the current state of its message, derived from its status events.
CREATE TABLE messages (
  cid                 INTEGER NOT NULL,
  recipient           TEXT NOT NULL,
  aud_channel         TEXT NOT NULL DEFAULT '',
  aud_variant         TEXT NOT NULL DEFAULT '',
  aud_input           TEXT,                    -- JSON object or NULL
  status              INTEGER NOT NULL DEFAULT 1,  -- 1 = PENDING
  attempt             INTEGER NOT NULL DEFAULT 0,
  cur_occurred_at     INTEGER,                 -- key of the current event:
  cur_event_id        TEXT,                    --   (attempt, status, cur_occurred_at, cur_event_id)
  reason_code         TEXT NOT NULL DEFAULT '',
  reason_message      TEXT NOT NULL DEFAULT '',
  channel             TEXT NOT NULL DEFAULT '', -- effective: from events, else audience
  variant             TEXT NOT NULL DEFAULT '',
  provider_message_id TEXT NOT NULL DEFAULT '',
  session_id          TEXT NOT NULL DEFAULT '',
  input_vars          TEXT,                    -- JSON object or NULL (effective)
  output_vars         TEXT,                    -- JSON object or NULL
  not_submitted_at    INTEGER,
  submitted_at        INTEGER,
  delivery_not_confirmed_at INTEGER,
  success_at          INTEGER,
  failed_at           INTEGER,
  last_event_at       INTEGER,
  clicks              INTEGER NOT NULL DEFAULT 0,
  first_click_at      INTEGER,
  added_at            INTEGER NOT NULL,
  updated_at          INTEGER NOT NULL,
  PRIMARY KEY (cid, recipient)
) WITHOUT ROWID;

-- Every accepted event, status or click, in arrival order.
CREATE TABLE events (
  id              INTEGER PRIMARY KEY,          -- arrival order across businesses
  business_id     TEXT NOT NULL,
  seq             INTEGER NOT NULL,             -- the business's sequence
  event_id        TEXT NOT NULL,
  fingerprint     BLOB NOT NULL,                -- hash of the payload, for DUPLICATE vs CONFLICT
  cid             INTEGER NOT NULL,
  recipient       TEXT NOT NULL,
  kind            INTEGER NOT NULL,             -- 1 status, 2 click
  occurred_at     INTEGER NOT NULL,
  received_at     INTEGER NOT NULL,
  -- status events
  status          INTEGER,
  attempt         INTEGER,
  reason_code     TEXT,
  reason_message  TEXT,
  channel         TEXT,
  variant         TEXT,
  provider_message_id TEXT,
  session_id      TEXT,
  input_vars      TEXT,
  output_vars     TEXT,
  -- click events
  link_id         TEXT,
  link_variable   TEXT,
  url             TEXT,
  country_code    TEXT,
  region          TEXT,
  city            TEXT,
  latitude        REAL,
  longitude       REAL,
  user_agent      TEXT,
  ip_address      TEXT
);
CREATE UNIQUE INDEX events_by_event_id ON events (business_id, event_id);
CREATE INDEX events_by_seq ON events (business_id, seq);
CREATE INDEX events_by_message ON events (cid, recipient);
CREATE INDEX events_clicks ON events (cid, id) WHERE kind = 2;

-- Counters maintained in the same transaction as the events, so stats never
-- scan. scope: '' (campaign), 'c:CHANNEL', 'v:VARIANT', 'l:LINK_ID'.
-- name: a stats bucket (pending, not_submitted, awaiting,
-- delivery_not_confirmed, failed, success) or clicks / unique_clickers.
CREATE TABLE counters (
  cid   INTEGER NOT NULL,
  scope TEXT NOT NULL,
  name  TEXT NOT NULL,
  value INTEGER NOT NULL,
  PRIMARY KEY (cid, scope, name)
) WITHOUT ROWID;

-- Who clicked which link, for unique clickers per link.
CREATE TABLE link_clickers (
  cid       INTEGER NOT NULL,
  link_id   TEXT NOT NULL,
  recipient TEXT NOT NULL,
  PRIMARY KEY (cid, link_id, recipient)
) WITHOUT ROWID;

-- Server-wide settings that must survive restarts, e.g. the key that signs
-- page and resume tokens.
CREATE TABLE server_settings (
  key   TEXT PRIMARY KEY,
  value BLOB NOT NULL
);
