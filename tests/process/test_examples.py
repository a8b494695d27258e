"""The README's examples stay true: the phone-store client runs against the gateway, and the Dockerfile keeps
its promises (non-root user, /data volume, health check, serve on 0.0.0.0)."""

from __future__ import annotations

import asyncio
import os
import sys

from tests.conftest import REPO, Gateway
from tests.fake_upstream import FakeUpstream, Script


async def test_phone_store_example_keeps_memory_with_only_new_messages(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.script(
        Script(content="Which screen size: 6.1, 6.5 or 6.7 inch?"),
        Script(content="And the resolution: 2K or 4K?"),
        Script(content="I recommend the 6.7 inch 4K model."),
    )
    env = {**os.environ, "GATEWAY_URL": f"{gateway.url}/v1", "DASHSCOPE_API_KEY": "sk-example"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "examples" / "phone_store.py"), env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0
    assert "assistant: I recommend the 6.7 inch 4K model." in out.decode()
    final = upstream.last["messages"]
    assert [m["role"] for m in final] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [len(r.body["messages"]) for r in upstream.requests] == [2, 4, 6]


def test_readme_quick_start_is_exactly_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make serve", "make test"]


def test_dockerfile_promises() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.13-slim" in text
    assert "\nUSER gateway\n" in text
    assert 'VOLUME ["/data"]' in text
    assert "GATEWAY_DB=/data/gateway.db" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'CMD ["serve", "--host", "0.0.0.0"]' in text and 'ENTRYPOINT ["gateway"]' in text
