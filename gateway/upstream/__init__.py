"""The way out to the model API: the client over the app's one ``ClientSession`` (timeouts, pooling, the
wait for a pool slot), retry policy, scrubbing of the gateway's own secrets from upstream text.

Implements ``core.ports.Upstream``.  May import ``core``, ``protocols``, ``settings``, ``observability`` and
``errors``; never ``http``, ``storage`` or ``cli``.
"""
