"""Memory gateway: an OpenAI-compatible proxy that gives stateless chat APIs server-side memory."""

__version__ = "0.1.0"
