"""The SQLite backend: connections in WAL mode, turns and their group commit, the catalog's and the keys' SQL,
migrations, checkpoints, and the storage faults readiness reports.  Every SQLite detail (``PRAGMA
data_version``, busy handling, commit batching) stays in here; the use cases see only ``core.ports``.
"""
