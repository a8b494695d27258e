"""The command line: ``gateway serve`` and the operator commands (conversations, keys, purge) over the database,
through the storage adapters and the core use cases, never SQL of its own.
"""
