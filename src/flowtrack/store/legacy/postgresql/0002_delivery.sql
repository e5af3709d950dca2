-- flowtrack schema for PostgreSQL, version 2: reports delivered,
-- the same tables, columns and meanings as SQLite's migrations 0007
-- (delivery) and 0008 (schedule layout); see store/migrations/.

ALTER TABLE campaigns ADD COLUMN quiet_period BIGINT;
ALTER TABLE campaigns ADD COLUMN last_arrival_at BIGINT;
ALTER TABLE campaigns ADD COLUMN completion_emitted INTEGER NOT NULL DEFAULT 0;
CREATE INDEX campaigns_open ON campaigns (state, last_arrival_at) WHERE state IN (1, 2);

CREATE TABLE webhook_endpoints (
  endpoint_id     TEXT COLLATE "C" PRIMARY KEY,
  business_id     TEXT COLLATE "C" NOT NULL,
  url             TEXT NOT NULL,
  description     TEXT NOT NULL DEFAULT '',
  events          TEXT NOT NULL,
  secret          TEXT NOT NULL,
  failure_rate    DOUBLE PRECISION,
  min_submitted   BIGINT NOT NULL DEFAULT 0,
  create_time     BIGINT NOT NULL,
  disabled_at     BIGINT,
  disabled_reason TEXT NOT NULL DEFAULT '',
  failing_since   BIGINT,
  failures        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX webhook_endpoints_by_business ON webhook_endpoints (business_id, create_time);

CREATE TABLE webhook_messages (
  message_id      TEXT COLLATE "C" PRIMARY KEY,
  business_id     TEXT COLLATE "C" NOT NULL,
  endpoint_id     TEXT COLLATE "C" NOT NULL,
  type            TEXT NOT NULL,
  body            TEXT NOT NULL,
  create_time     BIGINT NOT NULL,
  state           INTEGER NOT NULL,
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_at BIGINT,
  last_error      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_messages_due ON webhook_messages (next_attempt_at) WHERE state = 1;
CREATE INDEX webhook_messages_by_endpoint ON webhook_messages (endpoint_id, create_time);
CREATE INDEX webhook_messages_by_time ON webhook_messages (create_time);

CREATE TABLE webhook_attempts (
  message_id   TEXT COLLATE "C" NOT NULL,
  attempt      INTEGER NOT NULL,
  time         BIGINT NOT NULL,
  status_code  INTEGER NOT NULL DEFAULT 0,
  latency_us   BIGINT NOT NULL DEFAULT 0,
  error        TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (message_id, attempt)
);

CREATE TABLE webhook_thresholds (
  endpoint_id TEXT COLLATE "C" NOT NULL,
  cid         BIGINT NOT NULL,
  type        TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY (endpoint_id, cid, type)
);

CREATE TABLE report_schedules (
  schedule_id   TEXT COLLATE "C" PRIMARY KEY,
  business_id   TEXT COLLATE "C" NOT NULL,
  name          TEXT NOT NULL DEFAULT '',
  kind          INTEGER NOT NULL,
  format        INTEGER NOT NULL,
  campaign_id   TEXT COLLATE "C" NOT NULL DEFAULT '',
  filters       BYTEA NOT NULL,
  cron          TEXT NOT NULL DEFAULT '',
  time_zone     TEXT NOT NULL DEFAULT 'UTC',
  on_complete   INTEGER NOT NULL DEFAULT 0,
  link_ttl      BIGINT NOT NULL,
  retention     BIGINT NOT NULL,
  next_run_at   BIGINT,
  create_time   BIGINT NOT NULL,
  layout        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX report_schedules_by_business ON report_schedules (business_id, create_time);

CREATE TABLE report_runs (
  run_id        TEXT COLLATE "C" PRIMARY KEY,
  schedule_id   TEXT COLLATE "C" NOT NULL,
  business_id   TEXT COLLATE "C" NOT NULL,
  campaign_id   TEXT COLLATE "C" NOT NULL,
  status        INTEGER NOT NULL,
  error         TEXT NOT NULL DEFAULT '',
  file_name     TEXT NOT NULL DEFAULT '',
  content_type  TEXT NOT NULL DEFAULT '',
  path          TEXT NOT NULL DEFAULT '',
  bytes         BIGINT NOT NULL DEFAULT 0,
  rows          BIGINT NOT NULL DEFAULT 0,
  create_time   BIGINT NOT NULL,
  complete_time BIGINT
);
CREATE INDEX report_runs_by_schedule ON report_runs (schedule_id, create_time);
CREATE INDEX report_runs_processing ON report_runs (create_time) WHERE status = 1;

CREATE TABLE leases (
  name       TEXT COLLATE "C" PRIMARY KEY,
  holder     TEXT NOT NULL,
  expires_at BIGINT NOT NULL
);
