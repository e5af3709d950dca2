-- Campaign name search (name:TEXT) compares the name case-folded once, in
-- Python (str.casefold, domain/campaigns.fold), when it is written: the same
-- answer on SQLite and PostgreSQL whatever the database's locale (lower()
-- folds ASCII only in a C-locale database, and never folds the German sharp
-- s). The existing names are folded by migrate() in Python, in this
-- migration's transaction (store/pg/store.py, _AFTER).
ALTER TABLE campaigns ADD COLUMN name_folded TEXT COLLATE "C" NOT NULL DEFAULT '';
