"""The 0.x outpost-sdk line's call, as the seed docs show it, succeeds against relay:

    sdk.publish.event(tenant_id=..., topic=..., eligible_for_retry=..., data=...,
                      destination_id=..., metadata=...)

0.x and the 1.x the suite uses are the same package, so 0.x gets a venv of its own
(kept in pytest's cache dir, built from PyPI on first use) and runs in a subprocess.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.relay import ADMIN_KEY, admin_headers, make_settings

SDK_VERSION = "0.1.0"
NETWORK_TROUBLE = ("Could not find a version", "No matching distribution", "connection", "Network")


@pytest.fixture(scope="session")
def sdk0_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Reuse the venv across runs through pytest's cache when it is enabled.
    cache = getattr(request.config, "cache", None)
    name = f"outpost-sdk-{SDK_VERSION}"
    home = Path(cache.mkdir(name)) if cache is not None else tmp_path_factory.mktemp(name)
    python = home / "venv" / "bin" / "python"
    check = [str(python), "-c", "import outpost_sdk.publish"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(home / "venv")], check=True)
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"outpost-sdk=={SDK_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if install.returncode != 0:
        output = install.stdout + install.stderr
        if any(sign.lower() in output.lower() for sign in NETWORK_TROUBLE):
            pytest.skip(
                f"PyPI unreachable, cannot install outpost-sdk {SDK_VERSION}: {output[-300:]}"
            )
        pytest.fail(f"installing outpost-sdk {SDK_VERSION} failed:\n{output}")
    return python


SCRIPT = textwrap.dedent(
    """
    import sys
    from outpost_sdk import Outpost, models

    server_url, key, destination_id = sys.argv[1:4]
    with Outpost(security=models.Security(admin_api_key=key), server_url=server_url) as sdk:
        sdk.publish.event(tenant_id="acme", topic="topic.name", eligible_for_retry=False, data={
            "user_id": "userid",
            "status": "active",
        }, destination_id=destination_id, metadata={
            "source": "crm",
        })
    print("published")
    """
)


async def test_seed_publish_call_of_the_0x_sdk(
    sdk0_python: Path, start_relay: Any, database_url: str, receiver: Any, http: Any, db: Any
) -> None:
    server = await start_relay(make_settings(database_url))
    api = server.make_url("/api/v1")
    async with http.put(f"{api}/tenants/acme", headers=admin_headers()) as resp:
        assert resp.status == 201
    body = {"type": "webhook", "topics": ["topic.name"], "config": {"url": receiver.url("/seed")}}
    async with http.post(
        f"{api}/tenants/acme/destinations", json=body, headers=admin_headers()
    ) as resp:
        assert resp.status == 201
        destination_id = (await resp.json())["id"]

    process = await asyncio.create_subprocess_exec(
        str(sdk0_python),
        "-c",
        SCRIPT,
        str(api),
        ADMIN_KEY,
        destination_id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "published"

    [request] = await receiver.wait_for(1, path="/seed")
    assert orjson.loads(request.body) == {"user_id": "userid", "status": "active"}
    event = await db.fetchrow("SELECT topic, eligible_for_retry, metadata FROM relay.events")
    assert event["topic"] == "topic.name" and event["eligible_for_retry"] is False
    assert orjson.loads(event["metadata"]) == {"source": "crm"}
