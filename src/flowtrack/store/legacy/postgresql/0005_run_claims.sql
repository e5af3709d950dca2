-- flowtrack schema for PostgreSQL, version 3: report run claims, as SQLite's
-- migration 0009 (see store/migrations/0009_run_claims.sql).
ALTER TABLE report_runs ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE report_runs ADD COLUMN claim_expires BIGINT NOT NULL DEFAULT 0;
