"""Observability: structlog set-up and the per-request log fields (``logs``), Prometheus metrics (``metrics``).

Imports no other gateway package but ``gateway.errors``; every layer may import it.
"""
