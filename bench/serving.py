"""Running a benchmark server process: bind an ephemeral loopback port, announce it, serve until SIGTERM."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web


async def _serve(app: web.Application) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"port {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def run_until_signalled(app: web.Application) -> None:
    asyncio.run(_serve(app))
