"""Whole processes: spawned gateways, SIGKILL and SIGTERM, the CLI as a subprocess, overload and connections."""
