"""The use cases and their pure logic: chat turns, conversations, context windows, history matching, tokens,
summaries, access and limits, ordering, drain, retention, transfer formats, idempotency, the pass-through.

``ports`` declares what the use cases need from the outside (a turn store, a catalog, a key store, an upstream)
as Protocols, and re-exports the records they exchange (defined in ``records``); ``storage`` and ``upstream``
implement them and ``app`` wires them.
Imports ``protocols``, ``settings``, ``observability`` and ``errors``, never a web framework, a database driver,
``storage``, ``upstream``, ``http`` or ``cli``.  import-linter enforces it (pyproject.toml).
"""
