"""The storage adapters (SQLite): the store, the history cache, migrations and the database file itself."""
