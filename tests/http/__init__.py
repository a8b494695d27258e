"""The HTTP API of the real app, in-process (or spawned): what it answers, and what it remembers read back the way
clients and operators read it (tests/stored.py)."""
