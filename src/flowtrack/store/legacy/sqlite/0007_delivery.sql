-- flowtrack schema, version 7: reports delivered. Campaigns that
-- complete by themselves, webhook endpoints and their durable outbox, report
-- schedules and their runs, and leases (one server runs the schedules).

-- The campaign's own quiet period (µs; NULL = the server's default) and when
-- an event last arrived for it (the server's clock, µs).
ALTER TABLE campaigns ADD COLUMN quiet_period INTEGER;
ALTER TABLE campaigns ADD COLUMN last_arrival_at INTEGER;
-- 1 once campaign.completed was emitted (exactly once per campaign).
ALTER TABLE campaigns ADD COLUMN completion_emitted INTEGER NOT NULL DEFAULT 0;
CREATE INDEX campaigns_open ON campaigns (state, last_arrival_at) WHERE state IN (1, 2);

CREATE TABLE webhook_endpoints (
  endpoint_id     TEXT PRIMARY KEY,      -- ep_...
  business_id     TEXT NOT NULL,
  url             TEXT NOT NULL,
  description     TEXT NOT NULL DEFAULT '',
  events          TEXT NOT NULL,         -- JSON array of event types
  secret          TEXT NOT NULL,         -- whsec_... (signs deliveries)
  failure_rate    REAL,                  -- campaign.failure_rate: limit in [0, 1]
  min_submitted   INTEGER NOT NULL DEFAULT 0,
  create_time     INTEGER NOT NULL,
  disabled_at     INTEGER,
  disabled_reason TEXT NOT NULL DEFAULT '',
  failing_since   INTEGER,               -- first failed attempt since the last success
  failures        INTEGER NOT NULL DEFAULT 0  -- consecutive failed attempts
);
CREATE INDEX webhook_endpoints_by_business ON webhook_endpoints (business_id, create_time);

-- The outbox: one row per (event, endpoint), written in the same transaction
-- as the change that caused it. message_id is the webhook-id of every attempt.
CREATE TABLE webhook_messages (
  message_id      TEXT PRIMARY KEY,      -- msg_...
  business_id     TEXT NOT NULL,
  endpoint_id     TEXT NOT NULL,
  type            TEXT NOT NULL,
  body            TEXT NOT NULL,         -- the JSON body, exactly as sent
  create_time     INTEGER NOT NULL,      -- also the webhook-timestamp basis
  state           INTEGER NOT NULL,      -- 1 pending, 2 delivered, 3 failed
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER,
  last_error      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_messages_due ON webhook_messages (next_attempt_at) WHERE state = 1;
CREATE INDEX webhook_messages_by_endpoint ON webhook_messages (endpoint_id, create_time);
CREATE INDEX webhook_messages_by_time ON webhook_messages (create_time);

CREATE TABLE webhook_attempts (
  message_id   TEXT NOT NULL,
  attempt      INTEGER NOT NULL,
  time         INTEGER NOT NULL,
  status_code  INTEGER NOT NULL DEFAULT 0,  -- 0: no HTTP answer
  latency_us   INTEGER NOT NULL DEFAULT 0,
  error        TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (message_id, attempt)
) WITHOUT ROWID;

-- Which threshold events an endpoint already got for a campaign (once each).
CREATE TABLE webhook_thresholds (
  endpoint_id TEXT NOT NULL,
  cid         INTEGER NOT NULL,
  type        TEXT NOT NULL,
  PRIMARY KEY (endpoint_id, cid, type)
) WITHOUT ROWID;

CREATE TABLE report_schedules (
  schedule_id   TEXT PRIMARY KEY,        -- rs_...
  business_id   TEXT NOT NULL,
  name          TEXT NOT NULL DEFAULT '',
  kind          INTEGER NOT NULL,        -- ExportKind
  format        INTEGER NOT NULL,        -- ExportFormat
  campaign_id   TEXT NOT NULL DEFAULT '',-- '' with on_complete: every campaign
  filters       BLOB NOT NULL,           -- ExportReportRequest (filters only), serialized
  cron          TEXT NOT NULL DEFAULT '',
  time_zone     TEXT NOT NULL DEFAULT 'UTC',
  on_complete   INTEGER NOT NULL DEFAULT 0,
  link_ttl      INTEGER NOT NULL,        -- µs
  retention     INTEGER NOT NULL,        -- µs
  next_run_at   INTEGER,                 -- cron schedules only
  create_time   INTEGER NOT NULL
);
CREATE INDEX report_schedules_by_business ON report_schedules (business_id, create_time);

CREATE TABLE report_runs (
  run_id        TEXT PRIMARY KEY,        -- run_...
  schedule_id   TEXT NOT NULL,
  business_id   TEXT NOT NULL,
  campaign_id   TEXT NOT NULL,
  status        INTEGER NOT NULL,        -- 1 processing, 2 completed, 3 failed
  error         TEXT NOT NULL DEFAULT '',
  file_name     TEXT NOT NULL DEFAULT '',
  content_type  TEXT NOT NULL DEFAULT '',
  path          TEXT NOT NULL DEFAULT '',-- relative to the reports folder
  bytes         INTEGER NOT NULL DEFAULT 0,
  rows          INTEGER NOT NULL DEFAULT 0,
  create_time   INTEGER NOT NULL,
  complete_time INTEGER
);
CREATE INDEX report_runs_by_schedule ON report_runs (schedule_id, create_time);
CREATE INDEX report_runs_processing ON report_runs (create_time) WHERE status = 1;

-- A lease: the holder alone does the named work until expires_at.
CREATE TABLE leases (
  name       TEXT PRIMARY KEY,
  holder     TEXT NOT NULL,
  expires_at INTEGER NOT NULL
);
