-- flowtrack schema, version 9: a report run is claimed by the server making
-- it (`claimed_by`, a server's random holder id; '' = unclaimed) until
-- `claim_expires` (µs), renewed while it is written; only the claim's owner
-- finishes it, so two servers never make the same run.
ALTER TABLE report_runs ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE report_runs ADD COLUMN claim_expires INTEGER NOT NULL DEFAULT 0;
