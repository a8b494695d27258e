"""The SQLite backend: connections in WAL mode, turns and their group commit, the catalog's and the keys' SQL,
migrations, checkpoints, the storage faults readiness reports, and what lets several processes share one file
(versions checked by the history cache, byte-range locks on a side file, limits counted in the file).  Every SQLite
detail (``PRAGMA data_version``, busy handling, commit batching, ``fcntl`` locks) stays in here; the use cases see
only ``core.ports``.

``backend.SqliteStorage`` is the ``core.ports.Storage`` of it: ``store.ConversationStore`` (the turn store, over
``connections``, ``turns``, ``writer`` and ``freshness``), ``catalog.SqliteCatalog``, ``keys.SqliteKeyStore``,
``locks.FileLocks`` (``ConversationLocks`` and ``exclusive``) and, with several workers, ``limits.SqliteLimits``.
"""
