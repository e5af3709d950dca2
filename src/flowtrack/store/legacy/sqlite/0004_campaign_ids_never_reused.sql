-- flowtrack schema, version 4: internal campaign ids (cid) are never reused.
-- Before, a new campaign could get the cid of a deleted one (INTEGER PRIMARY
-- KEY takes max + 1) and inherit what the deleted one left behind. SQLite
-- cannot add AUTOINCREMENT to a column: the table is rebuilt, same columns.

CREATE TABLE campaigns_v3 (
  cid            INTEGER PRIMARY KEY AUTOINCREMENT, -- internal key used by every other table; never reused
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
INSERT INTO campaigns_v3 (
  cid, business_id, campaign_id, name, flow_id, channels, labels, state, implicit, create_time, schedule_time,
  start_time, complete_time, update_time, first_event_at, last_event_at, last_sequence
)
SELECT
  cid, business_id, campaign_id, name, flow_id, channels, labels, state, implicit, create_time, schedule_time,
  start_time, complete_time, update_time, first_event_at, last_event_at, last_sequence
FROM campaigns;
DROP TABLE campaigns;
ALTER TABLE campaigns_v3 RENAME TO campaigns;
CREATE INDEX campaigns_by_time ON campaigns (business_id, create_time, cid);

-- New ids start above every id any row still names, left-overs included.
DELETE FROM sqlite_sequence WHERE name IN ('campaigns', 'campaigns_v3');
INSERT INTO sqlite_sequence (name, seq)
SELECT 'campaigns', max(top) FROM (
  SELECT coalesce(max(cid), 0) AS top FROM campaigns
  UNION ALL SELECT coalesce(max(cid), 0) FROM counters
  UNION ALL SELECT coalesce(max(cid), 0) FROM messages
  UNION ALL SELECT coalesce(max(cid), 0) FROM events
  UNION ALL SELECT coalesce(max(cid), 0) FROM link_clickers
);

-- What deleted campaigns left behind (counters written at the COMMIT that
-- deleted them) belongs to nobody.
DELETE FROM counters WHERE cid NOT IN (SELECT cid FROM campaigns);
DELETE FROM link_clickers WHERE cid NOT IN (SELECT cid FROM campaigns);
DELETE FROM messages WHERE cid NOT IN (SELECT cid FROM campaigns);
DELETE FROM events WHERE cid NOT IN (SELECT cid FROM campaigns);
