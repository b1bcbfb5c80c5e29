"""Operator events end to end, as a user runs relay: `relay serve` started from a config
file that declares a tenant's destination and an operator sink. The destination's
receiver fails until relay disables it; the sink's receiver gets the alerts and the
disable, signed with the sink's secret."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from standardwebhooks import Webhook

from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SINK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ADMIN_KEY = "e2e-admin-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(config: Path, database_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    """`relay serve` with this config, as a user starts it; its output in ``log_path``."""
    env = os.environ | {
        "RELAY_DATABASE_URL": database_url,
        "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", "/tmp"),
    }
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "relay", "--config", str(config), "serve"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_serve_disables_a_failing_destination_and_tells_the_sink(
    receiver: Receiver, database_url: str, tmp_path: Path
) -> None:
    receiver.reply = lambda n, path: Reply(status=500) if path == "/orders" else Reply()
    port = free_port()
    config = tmp_path / "relay.toml"
    config.write_text(
        f"""
[server]
port = {port}
health_port = {free_port()}
admin_api_key = "{ADMIN_KEY}"

[delivery]
allow_private_networks = ["127.0.0.0/8"]
poll_interval_seconds = 0.2
auto_disable_after_failures = 3
per_destination_concurrency = 1
retry = {{ schedule_seconds = [0.1, 0.1, 0.1], jitter = 0 }}

[[tenants]]
id = "acme"

[[tenants.destinations]]
id = "orders"
url = "{receiver.url("/orders")}"

[operator_events]
deployment_id = "e2e"

[[operator_events.sinks]]
id = "pager"
url = "{receiver.url("/pager")}"
topics = ["alert.destination.consecutive_failure", "alert.destination.disabled"]
secret = "{SINK_SECRET}"
"""
    )
    log_path = tmp_path / "serve.log"
    proc = serve(config, database_url, log_path)
    base = f"http://127.0.0.1:{port}/api/v1"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    assert proc.poll() is None, log_path.read_text()
                    try:
                        async with http.get(f"{base}/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            for n in range(3):
                body = {"tenant_id": "acme", "topic": "order.created", "data": {"n": n}}
                async with http.post(f"{base}/publish", json=body, headers=headers) as resp:
                    assert resp.status == 202, await resp.text()

            # 3 failures of 3: 50% at 2, and at 3 both the 100% alert and the disable.
            arrived = await receiver.wait_for(3, path="/pager", timeout=20)
            await asyncio.sleep(1.0)
            assert len(receiver.on_path("/pager")) == 3, [r.json() for r in arrived]
            verifier = Webhook(SINK_SECRET)
            events = []
            for request in receiver.on_path("/pager"):
                verifier.verify(request.body, dict(request.headers))
                events.append(request.json())
            alerts = [e for e in events if e["topic"] == "alert.destination.consecutive_failure"]
            assert [a["data"]["consecutive_failures"] for a in alerts] == [
                {"current": 2, "max": 3, "threshold": 50},
                {"current": 3, "max": 3, "threshold": 100},
            ]
            (disabled,) = [e for e in events if e["topic"] == "alert.destination.disabled"]
            assert disabled["deployment_id"] == "e2e" and disabled["tenant_id"] == "acme"
            assert disabled["data"]["reason"] == "consecutive_failure"
            assert disabled["data"]["destination"]["id"] == "orders"
            assert disabled["data"]["destination"]["disabled_at"] is not None

            async with http.get(f"{base}/tenants/acme/destinations/orders", headers=headers) as r:
                assert (await r.json())["disabled_at"] is not None
            assert len(receiver.on_path("/orders")) == 3
            # The sink is listed by the operator events API, as the config declares it.
            async with http.get(f"{base}/operator-events/destinations", headers=headers) as r:
                assert [d["id"] for d in await r.json()] == ["pager"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
