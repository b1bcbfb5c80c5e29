"""Building Settings and a live relay for tests: in this process, or as CLI processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relay.config import Settings

ADMIN_KEY = "test-admin-key"
REPO = Path(__file__).resolve().parents[2]


def make_settings(database_url: str, **sections: Any) -> Settings:
    """Settings for a test: fast polling, loopback allowed, plus the given sections."""
    raw: dict[str, Any] = {
        "server": {"admin_api_key": ADMIN_KEY, "port": 0},
        "database": {"url": database_url},
        "delivery": {
            "poll_interval_seconds": 0.2,
            "allow_private_networks": ["127.0.0.0/8", "::1/128"],
            "retry": {"schedule_seconds": [0.2, 0.4], "jitter": 0},
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            merged = dict(raw[key])
            for k, v in value.items():
                if isinstance(v, dict) and isinstance(merged.get(k), dict):
                    merged[k] = {**merged[k], **v}
                else:
                    merged[k] = v
            raw[key] = merged
        else:
            raw[key] = value
    return Settings.model_validate(raw)


def toml(raw: Mapping[str, Any]) -> str:
    """A config file of ``raw``'s sections, one line each (``server = { port = 8080 }``):
    inline tables and arrays are TOML too."""
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in raw.items())


def _key(key: str) -> str:
    bare = key.isascii() and key.replace("_", "").replace("-", "").isalnum()
    return key if bare else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    # JSON's strings, numbers and booleans are written as TOML writes them.
    return json.dumps(value)


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


async def post_publish(http: Any, server: Any, body: Any, **kwargs: Any) -> tuple[int, Any]:
    """POST /api/v1/publish with the admin key; the status and the JSON answer."""
    async with http.post(
        server.make_url("/api/v1/publish"), headers=admin_headers(), **({"json": body} | kwargs)
    ) as resp:
        return resp.status, await resp.json()


class RelayProcess:
    """A relay CLI process as a user starts it (``python -m relay --config F COMMAND``),
    with its output in a log file. ``await ready()``, then ``stop()`` (SIGTERM, then
    SIGKILL if it lingers)."""

    def __init__(self, command: str, config: Path, log_path: Path, env: dict[str, str]) -> None:
        self.command = command
        self.log_path = log_path
        self.env = env
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "--config", str(config), command],
                cwd=REPO,
                env=os.environ
                | {"XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp")}
                | env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def ready(self, url: str, timeout: float = 60) -> None:
        """Wait until ``url`` (its /healthz) answers 200."""
        import aiohttp

        async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
            while True:
                assert self.proc.poll() is None, f"relay {self.command} exited:\n{self.log}"
                try:
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
