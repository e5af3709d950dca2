-- Campaign name search (name:TEXT) compares the name case-folded once, in
-- Python (str.casefold, domain/campaigns.fold), when it is written: the same
-- answer on SQLite and PostgreSQL whatever the database's locale (SQL's
-- lower() folds ASCII only in SQLite and in a C-locale PostgreSQL, and
-- never folds the German sharp s). migrate() registers ft_fold as
-- str.casefold for the backfill.
ALTER TABLE campaigns ADD COLUMN name_folded TEXT NOT NULL DEFAULT '';
UPDATE campaigns SET name_folded = ft_fold(name) WHERE name <> '';
