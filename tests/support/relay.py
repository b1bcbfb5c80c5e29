"""Building Settings and a live relay for tests."""

from __future__ import annotations

from typing import Any

from relay.config import Settings

ADMIN_KEY = "test-admin-key"


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


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


async def post_publish(http: Any, server: Any, body: Any, **kwargs: Any) -> tuple[int, Any]:
    """POST /api/v1/publish with the admin key; the status and the JSON answer."""
    async with http.post(
        server.make_url("/api/v1/publish"), headers=admin_headers(), **({"json": body} | kwargs)
    ) as resp:
        return resp.status, await resp.json()
