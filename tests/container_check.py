"""``make container-test``: build the project's Dockerfile and run the image, on a machine without Docker.

Everything specific to this offline set-up lives here, never in the Dockerfile:
- buildah (rootless-style flags: ``--storage-driver vfs``, ``--isolation chroot``) and debootstrap are installed
  with apt-get when missing;
- no registry is reachable, so the Dockerfile's base, ``python:3.13-slim``, is replaced by a local stand-in of the
  same name: a Debian trixie ``debootstrap --variant=minbase`` root with python3, venv and pip (``python``/``pip``
  linked), committed with buildah.  It is kept in buildah's storage and its root under ``CACHE``, so later runs
  skip it;
- the image is built with ``--pull-never``, this machine's certificate bundle mounted read-only for pip.

Then the image runs: the gateway starts as its non-root user, a chat turn with memory goes through it to a fake
upstream on the host, the container stops, starts again on the same state folder, and the next turn sees the
first.  (``buildah run -v`` is ignored on a path the image declares as a VOLUME, so the state folder is mounted at
``/state`` and the database pointed there.)  Exits non-zero, naming the step, on any failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.fake_upstream import FakeUpstream

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/tmp/memory-gateway-ci")
BASE = "docker.io/library/python:3.13-slim"
SUITE = "trixie"  # Debian 13, whose python3 is 3.13: the same Python as the base it stands in for
IMAGE = "localhost/memory-gateway:test"
STORAGE = ["--storage-driver", "vfs"]
PORT = 18080


def step(name: str) -> None:
    print(f"container-test: {name}", flush=True)


def run(*args: str, check: bool = True, capture: bool = False) -> str:
    result = subprocess.run(args, check=False, capture_output=capture, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"container-test: failed: {' '.join(args)}\n{result.stderr if capture else ''}")
    return result.stdout if capture else ""


def ensure_tools() -> None:
    if shutil.which("buildah") and shutil.which("debootstrap"):
        return
    step("installing buildah and debootstrap")
    run("apt-get", "update", "-qq")
    run("apt-get", "install", "-y", "-qq", "buildah", "debootstrap")


def debian_mirror() -> str:
    for source in Path("/etc/apt/sources.list.d").glob("*.sources"):
        for line in source.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def ensure_base() -> None:
    if run("buildah", *STORAGE, "images", "--quiet", BASE, check=False, capture=True).strip():
        return
    root = CACHE / f"rootfs-{SUITE}"
    if not (root / "usr/bin/python3").exists():
        step("making the stand-in base image (debootstrap, about a minute)")
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        packages = "python3,python3-venv,python3-pip,ca-certificates"
        run("debootstrap", "--variant=minbase", f"--include={packages}", SUITE, str(root), debian_mirror())
    for name, target in (("python", "python3"), ("pip", "pip3")):
        link = root / "usr/bin" / name
        if not link.exists():
            link.symlink_to(target)
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    step("committing the stand-in base image")
    container = run("buildah", *STORAGE, "from", "scratch", capture=True).strip()
    mount = run("buildah", *STORAGE, "mount", container, capture=True).strip()
    run("cp", "-a", f"{root}/.", mount)
    run("buildah", *STORAGE, "umount", container)
    run("buildah", *STORAGE, "commit", container, BASE)
    run("buildah", *STORAGE, "rm", container)


def build() -> None:
    step("building the Dockerfile")
    run(
        "buildah", *STORAGE, "bud", "--format", "docker", "--isolation", "chroot", "--pull-never", "--layers",
        "-v", "/etc/ssl/certs:/etc/ssl/certs:ro", "-t", IMAGE, str(REPO),
    )  # fmt: skip
    size = run("buildah", *STORAGE, "images", "--format", "{{.Size}}", IMAGE, capture=True).strip()
    step(f"image built: {IMAGE}, {size}")


class Container:
    """One run of the image: ``buildah run`` of a fresh working container, the gateway as its process."""

    def __init__(self, state: Path, upstream_url: str) -> None:
        self._state = state
        self._upstream = upstream_url
        self._name = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = state / f"run-{time.monotonic_ns()}.log"

    def start(self) -> None:
        self._name = run("buildah", *STORAGE, "from", "--pull-never", IMAGE, capture=True).strip()
        env = ["GATEWAY_DB=/state/gateway.db", f"GATEWAY_PORT={PORT}", f"GATEWAY_UPSTREAM_BASE_URL={self._upstream}"]
        args = ["buildah", *STORAGE, "run", "--isolation", "chroot", "-v", f"{self._state}:/state"]
        for variable in env:
            args += ["--env", variable]
        # The image's entrypoint and command, as `docker run` would run them.
        args += [self._name, "--", "gateway", "serve", "--host", "0.0.0.0"]
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> int:
        """SIGTERM to the gateway, as `docker stop` sends it (the image's STOPSIGNAL); its exit status, which
        ``buildah run`` passes on."""
        assert self._proc is not None
        pid, _ = gateway_process()
        os.kill(pid, signal.SIGTERM)
        status = self._proc.wait(timeout=40)
        run("buildah", *STORAGE, "rm", self._name)
        return status


def gateway_process() -> tuple[int, int]:
    """(pid, uid) of the gateway running in the container (a child of ``buildah run``)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            text = status.read_text()
        except OSError:
            continue
        if b"gateway serve --host 0.0.0.0" in cmdline and b"buildah" not in cmdline:
            uid = int(next(line for line in text.splitlines() if line.startswith("Uid:")).split()[1])
            return int(status.parent.name), uid
    raise SystemExit("container-test: the gateway process is not running")


async def wait_ready(container: Container) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{PORT}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"container-test: the gateway did not become ready:\n{container.log.read_text()}")


async def turn(text: str) -> None:
    headers = {"Authorization": "Bearer sk-container", "X-Conversation-Id": "boxed"}
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": text}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{PORT}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        if resp.status != 200:
            raise SystemExit(f"container-test: a turn got {resp.status}: {await resp.text()}")


async def run_image(state: Path) -> None:
    upstream = await FakeUpstream().start()
    try:
        first = Container(state, upstream.url)
        step("running the image")
        first.start()
        await wait_ready(first)
        _, uid = gateway_process()
        if uid == 0:
            raise SystemExit("container-test: the gateway runs as root")
        step(f"the gateway runs as uid {uid}; a turn with memory")
        await turn("I want a phone with a 6.7 inch screen")
        if (status := first.stop()) != 0:
            raise SystemExit(f"container-test: the gateway exited {status} on SIGTERM:\n{first.log.read_text()}")
        if not any('"event":"server_stopped"' in line for line in first.log.read_text().splitlines()):
            raise SystemExit("container-test: no JSON log line for the stop on stdout")
        step("stopped; starting again on the same state folder")
        second = Container(state, upstream.url)
        second.start()
        await wait_ready(second)
        await turn("and in 4K?")
        second.stop()
        history = [m["content"] for m in upstream.last["messages"]]
        if history != ["I want a phone with a 6.7 inch screen", "reply 1", "and in 4K?"]:
            raise SystemExit(f"container-test: the conversation did not survive the restart: {json.dumps(history)}")
        step("the conversation survived the restart: ok")
    finally:
        await upstream.close()


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("container-test: needs root (apt-get, buildah with the vfs driver)")
    ensure_tools()
    ensure_base()
    build()
    with tempfile.TemporaryDirectory(prefix="gateway-container-") as tmp:
        state = Path(tmp)
        state.chmod(0o777)  # the image's non-root user writes its database here
        asyncio.run(run_image(state))


if __name__ == "__main__":
    sys.exit(main())
