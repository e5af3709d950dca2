"""What only the SQLite backend does, a module per job (the PostgreSQL side is store/pg/)."""
