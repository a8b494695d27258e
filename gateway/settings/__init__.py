"""Settings: every setting declared once (``declared``), loaded into one frozen ``Config`` (``config``) from
defaults < config.toml < environment < flags, and the per-model limits table (``models``).

Imports only ``gateway.errors`` and the standard library: every other layer may import it.
"""
