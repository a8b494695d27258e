"""Settings: every setting declared once (``declared``), loaded into one frozen ``Config`` (``config``) from
defaults < config.toml < environment < flags, and the per-model limits table (``models``).

May import ``gateway.errors`` and the standard library, nothing else of the gateway's: every other layer may
import it.
"""
