"""GET /api/v1/config: relay's settings under the names of Outpost's managed configuration.

Outpost answers this route only in its managed cloud; self-hosted, its settings are
environment variables. relay's are its config file and RELAY_* variables, so the route
is read-only: GET shows the values in force, named as Outpost names them (a tool written
for Outpost's configuration API can read them), and PATCH is refused with the place to
change them. Keys relay has no counterpart for are left out, as Outpost leaves out what
is unset.
"""

from __future__ import annotations

from aiohttp import web

from relay import opevents
from relay.api.auth import require_admin
from relay.api.errors import json_response, outpost_error_shape
from relay.appkeys import SETTINGS
from relay.config import Settings
from relay.delivery.webhook import USER_AGENT
from relay.retry import RetryPolicy

routes = web.RouteTableDef()

PATH = "/api/v1/config"

# Outpost calls its own format "default"; relay calls it "outpost".
OUTPOST_MODE_NAMES = {"outpost": "default", "standard": "standard"}


def _number(value: float) -> str:
    """Seconds as Outpost's variables spell them: 5, not 5.0."""
    return str(int(value)) if float(value).is_integer() else str(value)


def managed_config(settings: Settings) -> dict[str, str]:
    """The settings in force, as Outpost's ``ManagedConfig`` (every value a string)."""
    delivery = settings.delivery
    webhook = delivery.webhook
    outpost = webhook.outpost
    mode = delivery.webhook_mode
    prefix = outpost.header_prefix if mode == "outpost" else webhook.standard.header_prefix
    config = {
        "TOPICS": ",".join(settings.topics),
        # relay accepts wildcard subscriptions always (README, "Compatibility").
        "TOPICS_ALLOW_WILDCARDS": "true",
        "DELIVERY_TIMEOUT_SECONDS": _number(delivery.timeout_seconds),
        "HTTP_USER_AGENT": USER_AGENT,
        "DESTINATIONS_WEBHOOK_MODE": OUTPOST_MODE_NAMES[mode],
        "DESTINATIONS_WEBHOOK_HEADER_PREFIX": prefix,
        "DESTINATIONS_INCLUDE_MILLISECOND_TIMESTAMP": str(
            webhook.include_millisecond_timestamp
        ).lower(),
        "DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE": outpost.signature_content_template,
        "DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_TEMPLATE": outpost.signature_header_template,
        "DESTINATIONS_WEBHOOK_SIGNATURE_ENCODING": outpost.signature_encoding,
        "DESTINATIONS_WEBHOOK_SIGNATURE_ALGORITHM": outpost.signature_algorithm,
        "ALERT_AUTO_DISABLE_DESTINATION": str(delivery.auto_disable_after_failures > 0).lower(),
        # Retries after the first attempt, as relay counts them from either form.
        "MAX_RETRY_LIMIT": str(len(RetryPolicy.from_settings(delivery.retry).delays)),
    }
    for name, header in (
        ("EVENT_ID", outpost.event_id_header_name),
        ("SIGNATURE", outpost.signature_header_name),
        ("TIMESTAMP", outpost.timestamp_header_name),
        ("TOPIC", outpost.topic_header_name),
    ):
        # Unset: the prefix and Outpost's name, as in Outpost, which shows it unset too.
        if header is not None:
            config[f"DESTINATIONS_WEBHOOK_{name}_HEADER_NAME"] = header
    # The count operator events alert at (the disable threshold when auto-disable is on).
    config["ALERT_CONSECUTIVE_FAILURE_COUNT"] = str(opevents.policy(settings).max_failures)
    # Every delivery that gives up is reported: no deduplication window.
    config["ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS"] = "0"
    retry = delivery.retry
    if retry.schedule_seconds is not None:
        config["RETRY_SCHEDULE"] = ",".join(_number(s) for s in retry.schedule_seconds)
    else:
        config["RETRY_INTERVAL_SECONDS"] = _number(retry.base_seconds)
    return config


@routes.get(PATH)
async def get_config(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response(managed_config(request.app[SETTINGS]))


@routes.patch(PATH)
async def update_config(request: web.Request) -> web.Response:
    require_admin(request)
    settings = request.app[SETTINGS]
    where = settings.config_path or "the config file (RELAY_CONFIG)"
    message = (
        f"relay's configuration is read-only over the API: change it in {where} or with "
        "RELAY_* environment variables (config/relay.example.toml lists every key) and "
        "restart relay"
    )
    return json_response(outpost_error_shape(405, message, None), 405, {"Allow": "GET"})
