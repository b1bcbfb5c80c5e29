"""The 0.x outpost-sdk line's call, as the seed docs show it, succeeds against relay:

    sdk.publish.event(tenant_id=..., topic=..., eligible_for_retry=..., data=...,
                      destination_id=..., metadata=...)

0.x and the 1.x the suite uses are the same package, so 0.x cannot be a dependency of
the test extra. It is installed at install time, next to the venv's packages, by

    .venv/bin/pip install --no-deps --target .venv/outpost-sdk-0.1.0 outpost-sdk==0.1.0

(the README's test command and .ci/run do), and runs in a subprocess of the suite's own
Python with that directory first on its path: the suite downloads nothing while it runs.
(Its wheel carries no licence file, so it is not vendored.)
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.relay import ADMIN_KEY, admin_headers, make_settings

SDK_VERSION = "0.1.0"
SDK_DIR = Path(sys.prefix) / f"outpost-sdk-{SDK_VERSION}"
INSTALL = (
    f"{Path(sys.prefix) / 'bin' / 'pip'} install --no-deps --target {SDK_DIR} "
    f"outpost-sdk=={SDK_VERSION}"
)


@pytest.fixture(scope="session")
def sdk0_path() -> Path:
    """The directory holding outpost-sdk 0.1.0, installed with the test dependencies."""
    if not (SDK_DIR / f"outpost_sdk-{SDK_VERSION}.dist-info").is_dir():
        message = f"outpost-sdk {SDK_VERSION} is not installed; install it with: {INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SDK_DIR


SCRIPT = textwrap.dedent(
    """
    import sys
    from importlib.metadata import version
    from outpost_sdk import Outpost, models

    assert version("outpost_sdk") == "0.1.0", version("outpost_sdk")
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
    sdk0_path: Path, start_relay: Any, database_url: str, receiver: Any, http: Any, db: Any
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

    path = os.pathsep.join(filter(None, [str(sdk0_path), os.environ.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRIPT,
        str(api),
        ADMIN_KEY,
        destination_id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "published"

    [request] = await receiver.wait_for(1, path="/seed")
    assert orjson.loads(request.body) == {"user_id": "userid", "status": "active"}
    event = await db.fetchrow("SELECT topic, eligible_for_retry, metadata FROM relay.events")
    assert event["topic"] == "topic.name" and event["eligible_for_retry"] is False
    assert orjson.loads(event["metadata"]) == {"source": "crm"}
