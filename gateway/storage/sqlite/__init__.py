"""The SQLite backend: connections in WAL mode, turns and their group commit, the catalog's and the keys' SQL,
migrations, checkpoints, and the storage faults readiness reports.  Every SQLite detail (``PRAGMA
data_version``, busy handling, commit batching) stays in here; the use cases see only ``core.ports``.

``backend.SqliteStorage`` is the ``core.ports.Storage`` of it: ``store.ConversationStore`` (the turn store, over
``connections``, ``turns`` and ``writer``), ``catalog.SqliteCatalog`` and ``keys.SqliteKeyStore``.
"""
