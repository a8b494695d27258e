"""Storage adapters behind ``core.ports``: the backend-neutral history cache (``cache``) and the SQLite backend
(``sqlite``); ``open.open_storage(config)`` opens the configured one as a ``core.ports.Storage``.  A new backend
is a sibling package implementing the same ports, run by the same contract tests (tests/storage/).

May import ``core``, ``protocols``, ``settings``, ``observability`` and ``errors``; never ``http``, ``upstream``
or ``cli``.
"""
