"""The PostgreSQL backend: one database shared by every gateway process and replica.

``database`` owns the connections (an asyncpg pool) and the history cache; ``migrations`` the schema (and the
PL/pgSQL function a turn is recorded by); ``turns`` a turn's and a load's SQL and row shapes; ``store`` the turn
store (``core.ports.TurnStore``); ``responses`` the Responses API records; ``readiness`` what ``/readyz`` reports;
``catalog``, ``edits`` and ``keys`` the conversations API, CLI and gateway keys; ``locks``, ``limits`` and
``coordination_schema`` the cross-process conversation locks, shared request limits and their tables; ``backend``
bundles them as a ``core.ports.Storage``.  No other module holds SQL for PostgreSQL.
"""
