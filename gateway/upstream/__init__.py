"""The way out to the model API: the client over the app's one ``ClientSession`` (``client``: timeouts,
retries, credentials; ``pool``: the wait for a pool slot), the chat dialects it speaks (``dialects``: OpenAI's
compatible mode or DashScope's native protocol), reading replies back (``replies``), which headers cross
(``headers``), retry policy (``retries``), scrubbing of the gateway's own secrets from upstream text (``secrets``).

Implements ``core.ports.Upstream``.  May import ``core``, ``protocols``, ``settings``, ``observability`` and
``errors``; never ``http``, ``storage`` or ``cli``.
"""
