-- flowtrack schema, version 8: report schedules remember the columns of a
-- messages report (ExportLayout; 0 = unspecified, i.e. flowtrack's own), so
-- existing schedules keep theirs.
ALTER TABLE report_schedules ADD COLUMN layout INTEGER NOT NULL DEFAULT 0;
