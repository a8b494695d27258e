"""Pure logic, no server and no database file: history rules, windows, tokens, wire shapes, settings."""
