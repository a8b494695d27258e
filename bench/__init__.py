"""Benchmark harness: ``make bench`` (``python -m bench.run``) compares the gateway with its floor."""
