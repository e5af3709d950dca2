-- flowtrack schema, version 6: engagement and the flow funnel.
-- Engagement events are kind 3 in the events log; per message their fold
-- lives in `engagement`, beside (not in) the messages row, and every reply
-- and button tap has a row of its own, in sequence order, for reports to page
-- over. Counters (see 0001) gain the names read, replied, replies, opted_out,
-- button_clickers, button_clicks, entered, exited, goal_achieved.

-- Engagement events in the events log (kind = 3); NULL for the other kinds.
ALTER TABLE events ADD COLUMN engagement INTEGER;   -- EngagementKind number
ALTER TABLE events ADD COLUMN text TEXT;            -- REPLIED: the text ('' if discarded)
ALTER TABLE events ADD COLUMN discard_text INTEGER; -- REPLIED: 1 if sent with discard_text
ALTER TABLE events ADD COLUMN button_id TEXT;       -- BUTTON_CLICKED
ALTER TABLE events ADD COLUMN button_name TEXT;     -- BUTTON_CLICKED
ALTER TABLE events ADD COLUMN exit_reason TEXT;     -- EXITED_FLOW
ALTER TABLE events ADD COLUMN goal_id TEXT;         -- GOAL_ACHIEVED

-- One row per message with at least one engagement event: the fold of its
-- engagement events (domain/engagement.py). Join messages on (cid, recipient).
CREATE TABLE engagement (
  cid             INTEGER NOT NULL,
  recipient       TEXT NOT NULL,
  read_at         INTEGER,                   -- earliest READ
  replied_at      INTEGER,                   -- earliest REPLIED
  replies         INTEGER NOT NULL DEFAULT 0,
  opted_out_at    INTEGER,                   -- earliest OPTED_OUT
  first_button_at INTEGER,                   -- earliest BUTTON_CLICKED
  button_clicks   INTEGER NOT NULL DEFAULT 0,
  entered_at      INTEGER,                   -- earliest ENTERED_FLOW, EXITED_FLOW or GOAL_ACHIEVED
  exited_at       INTEGER,                   -- earliest EXITED_FLOW
  exit_event_id   TEXT,                      --   its event id (tie-break) and reason
  exit_reason     TEXT NOT NULL DEFAULT '',
  goal_at         INTEGER,                   -- earliest GOAL_ACHIEVED
  goal_event_id   TEXT,                      --   its event id (tie-break) and goal
  goal_id         TEXT NOT NULL DEFAULT '',
  -- The channel and variant scopes this row's counters were counted in; the
  -- writer moves them when a status event changes the message's channel.
  counted_channel TEXT NOT NULL DEFAULT '',
  counted_variant TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (cid, recipient)
) WITHOUT ROWID;

-- Every reply, in sequence order per campaign (the Replies tab).
CREATE TABLE replies (
  cid         INTEGER NOT NULL,
  seq         INTEGER NOT NULL,              -- the event's sequence
  recipient   TEXT NOT NULL,
  occurred_at INTEGER NOT NULL,
  text        TEXT NOT NULL DEFAULT '',      -- '' if none or discarded
  PRIMARY KEY (cid, seq)
) WITHOUT ROWID;
CREATE INDEX replies_by_recipient ON replies (cid, recipient, seq);

-- Every button tap, in sequence order per campaign.
CREATE TABLE button_clicks (
  cid         INTEGER NOT NULL,
  seq         INTEGER NOT NULL,
  recipient   TEXT NOT NULL,
  occurred_at INTEGER NOT NULL,
  button_id   TEXT NOT NULL,
  button_name TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (cid, seq)
) WITHOUT ROWID;
CREATE INDEX button_clicks_by_recipient ON button_clicks (cid, recipient, seq);

-- Deleting a campaign deletes its engagement rows too (DeleteCampaign
-- deletes the campaign row last, after its messages, events and counters).
CREATE TRIGGER campaigns_delete_engagement AFTER DELETE ON campaigns
BEGIN
  DELETE FROM engagement WHERE cid = old.cid;
  DELETE FROM replies WHERE cid = old.cid;
  DELETE FROM button_clicks WHERE cid = old.cid;
END;
