"""The destination types relay knows: one line each.

Every type has a schema file (relay/delivery/schemas/<type>.json), so validation and
``/destination-types`` are complete for all of Outpost's types. A type delivers once it
has a module (``relay.delivery.<type>``, whose ``PROVIDER`` is its Provider) and that
module's client library is installed (its pip extra). A type that cannot deliver here is
refused when a destination is created (the API's 422, the config file's error), naming
the extra to install; its schema still validates and describes it.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from relay.delivery.base import Provider, Schema

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    # The module whose PROVIDER delivers this type; None: not built yet.
    module: str | None
    # The pip extra holding its client library (None: nothing beyond relay's own).
    extra: str | None = None


# Outpost's types in Outpost's order (its /destination-types answer), then relay's own.
TYPES: dict[str, Entry] = {
    "webhook": Entry("relay.delivery.webhook"),
    "hookdeck": Entry("relay.delivery.hookdeck"),
    "aws_sqs": Entry("relay.delivery.aws_sqs", "aws"),
    "aws_kinesis": Entry("relay.delivery.aws_kinesis", "aws"),
    "aws_s3": Entry("relay.delivery.aws_s3", "aws"),
    "gcp_pubsub": Entry("relay.delivery.gcp_pubsub", "gcp"),
    "azure_servicebus": Entry("relay.delivery.azure_servicebus", "azure"),
    "rabbitmq": Entry("relay.delivery.rabbitmq", "rabbitmq"),
    "kafka": Entry("relay.delivery.kafka", "kafka"),
    # relay's own, beyond Outpost's.
    "nats_jetstream": Entry("relay.delivery.nats_jetstream", "nats"),
    "redis_streams": Entry("relay.delivery.redis_streams", "redis"),
}


class Unavailable(Exception):
    """This relay cannot deliver to destinations of this type; the message says why and
    what to install."""


_schemas: dict[str, Schema] = {}
# What each type resolved to: its Provider, or why it is unavailable.
_providers: dict[str, Provider | Unavailable] = {}


def known(type: str) -> bool:
    return type in TYPES


def unknown_type(type: str) -> str:
    """The problem with a type relay does not know."""
    return f"type {type!r} is not a destination type; use one of: {', '.join(map(repr, TYPES))}"


def schema(type: str) -> Schema:
    found = _schemas.get(type)
    if found is None:
        found = _schemas[type] = Schema.load(type)
    return found


def schemas() -> list[dict[str, Any]]:
    """Every type's description, as ``GET /destination-types`` answers."""
    return [schema(t).as_json() for t in TYPES]


def _resolve(type: str) -> Provider | Unavailable:
    entry = TYPES[type]
    if entry.module is None:
        return Unavailable(
            f"relay cannot deliver to {type} destinations yet: its fields are known, its "
            "delivery is not built (README, destination types)"
        )
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        if entry.extra is None or exc.name == entry.module:
            raise
        log.debug("%s destinations are unavailable: %s", type, exc)
        return Unavailable(
            f"{type} destinations need the client library of relay's {entry.extra!r} extra "
            f"({exc.name} is not installed): pip install 'relay[{entry.extra}]'"
        )
    provider = module.PROVIDER
    assert isinstance(provider, Provider) and provider.type == type, entry.module
    return provider


def provider(type: str) -> Provider:
    """The Provider that delivers ``type``; Unavailable when this relay cannot (a missing
    extra, a type not built yet). KeyError for a type relay does not know."""
    found = _providers.get(type)
    if found is None:
        found = _providers[type] = _resolve(type)
    if isinstance(found, Unavailable):
        raise found
    return found


def describer(type: str) -> Provider:
    """The type's Provider if it can deliver here, else one that knows its schema only:
    enough to validate a destination, obfuscate it and show it."""
    try:
        return provider(type)
    except Unavailable:
        return Provider(schema(type))


def availability(type: str) -> str | None:
    """Why ``type`` cannot be delivered here, or None when it can."""
    try:
        provider(type)
    except Unavailable as exc:
        return str(exc)
    return None


def forget() -> None:
    """Resolve every type again on next use (tests that take a library away)."""
    _providers.clear()
