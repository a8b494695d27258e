"""Wire shapes, pure: validation and encoding of OpenAI chat requests (``openai_chat``), OpenAI's Responses API as
chat completions (the ``openai_responses`` package), server-sent events (``sse``), DashScope's native protocol
translated to and from the OpenAI shapes (``dashscope``).

No I/O: imports ``gateway.errors``, the standard library and orjson (``settings`` is allowed), never a web
framework, a database driver, ``core``, ``storage``, ``upstream`` or ``http``.  import-linter enforces it
(pyproject.toml).
"""
