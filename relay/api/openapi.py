"""The OpenAPI document ``GET /api/v1/openapi.json`` serves: openapi.json as written, and
every destination type's schemas made from the type's field schema
(relay/delivery/schemas/<type>.json, which validation reads and /destination-types
answers), once per process.

The pattern is Outpost's contract: ``<Name>Config`` and ``<Name>Credentials``, their
partial ``...Update`` forms for PATCH, ``Destination<Name>``, ``DestinationCreate<Name>``
and ``DestinationUpdate<Name>``, and ``Destination``, ``DestinationCreate`` and
``DestinationUpdate`` as a ``oneOf`` of those with a discriminator on ``type``. The
webhook's schemas stay written by hand (its config and credentials are relay's own:
webhook_mode, a JSON string of custom headers, secret rotation) and are the mould of the
other types' envelopes.

Made when served rather than generated into the file: a field added to a schema file, or
a type to the registry, is in the document with no step to forget, as it is in
validation and the portal's form.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import orjson

from relay.delivery import registry
from relay.delivery.base import CHECKBOX_VALUES

# Outpost's names for its types' schemas (AWSSQSConfig, DestinationGCPPubSub, ...);
# another type is named by its words capitalised (redis_streams: RedisStreams).
NAMES = {
    "webhook": "Webhook",
    "hookdeck": "Hookdeck",
    "aws_sqs": "AWSSQS",
    "aws_kinesis": "AWSKinesis",
    "aws_s3": "AWSS3",
    "gcp_pubsub": "GCPPubSub",
    "azure_servicebus": "AzureServiceBus",
    "rabbitmq": "RabbitMQ",
    "kafka": "Kafka",
    "nats_jetstream": "NATSJetStream",
}
# Written by hand in openapi.json, and the mould of the other types' envelopes.
MOULD = "webhook"
REF = "#/components/schemas/"
OBFUSCATED = " Sensitive: answers show it obfuscated (its first four characters, then asterisks)."
TARGET = "A human-readable representation of the destination target. Read-only."
TARGET_URL = "A URL link to the destination target, where the type has one. Read-only."


def name(type: str) -> str:
    """The part of a type's schema names after Destination (DestinationAWSSQS)."""
    return NAMES.get(type) or "".join(word.capitalize() for word in type.split("_"))


# Where the made schemas go, as in Outpost's document: each kind after the webhook's
# schema of that kind (every type's Config and Credentials after WebhookCredentials,
# ...), and Destination, DestinationCreate, DestinationUpdate after their types'.
GROUPS = (
    ("{}Config", "{}Credentials"),
    ("Destination{}",),
    ("DestinationCreate{}",),
    ("{}ConfigUpdate", "{}CredentialsUpdate"),
    ("DestinationUpdate{}",),
)


@functools.cache
def document() -> bytes:
    """The document as served (JSON)."""
    spec = orjson.loads(resources.files("relay.api").joinpath("openapi.json").read_bytes())
    spec["components"]["schemas"] = schemas(spec["components"]["schemas"])
    return orjson.dumps(spec)


def schemas(written: Mapping[str, Any]) -> dict[str, Any]:
    """openapi.json's schemas (``written``) with every other type's made and placed."""
    types = [t for t in registry.TYPES if t != MOULD]
    made: dict[str, dict[str, Any]] = {}
    for type in types:
        made |= type_schemas(type, registry.schema(type).document, written)
    answer: dict[str, Any] = {}
    for key, value in written.items():
        answer[key] = value
        for group in GROUPS:
            if key != group[-1].format(name(MOULD)):
                continue
            names = [pattern.format(name(t)) for t in types for pattern in group]
            # (A type without config fields has no Config.)
            answer |= {n: made[n] for n in names if n in made}
            if group[0].startswith("Destination"):
                answer[group[0].format("")] = polymorphic(group[0])
    answer["DestinationType"] = dict(written["DestinationType"], enum=list(registry.TYPES))
    return answer


def polymorphic(pattern: str) -> dict[str, Any]:
    """``Destination{}`` (or Create, Update) as one of every type's, chosen by ``type``."""
    refs = {t: REF + pattern.format(name(t)) for t in registry.TYPES}
    return {
        "oneOf": [{"$ref": ref} for ref in refs.values()],
        "discriminator": {"propertyName": "type", "mapping": refs},
    }


def type_schemas(
    type: str, described: Mapping[str, Any], written: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """One type's schemas, from its field schema (``described``: the schema file) and the
    webhook's envelopes (``written``). Pure."""
    n, label = name(type), described.get("label") or type
    config = list(described.get("config_fields", ()))
    credentials = list(described.get("credential_fields", ()))
    made: dict[str, dict[str, Any]] = {}
    if config:
        made[f"{n}Config"] = fields_object(config)
        made[f"{n}ConfigUpdate"] = fields_object(config, partial=f"{label} config")
    made[f"{n}Credentials"] = fields_object(credentials)
    made[f"{n}CredentialsUpdate"] = fields_object(credentials, partial=f"{label} credentials")
    no_config = {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": f"{label} destinations have no config fields; an answer may show "
        "values relay keeps for the target here (read-only).",
    }
    config_ref = {"$ref": f"{REF}{n}Config"} if config else no_config
    credentials_ref = {"$ref": f"{REF}{n}Credentials"}

    shown = _envelope(written[f"Destination{name(MOULD)}"], type, label)
    shown["properties"] |= {"config": config_ref, "credentials": credentials_ref}
    shown["properties"]["target"]["description"] = TARGET
    shown["properties"]["target_url"]["description"] = TARGET_URL
    made[f"Destination{n}"] = shown

    create = _envelope(written[f"DestinationCreate{name(MOULD)}"], type, label)
    create["properties"]["type"]["description"] = f"Type of the destination. Must be '{type}'."
    create["properties"] |= {"config": config_ref, "credentials": credentials_ref}
    create["required"] = [
        "type",
        "topics",
        *(["config"] if any(f.get("required") for f in config) else []),
        *(["credentials"] if any(f.get("required") for f in credentials) else []),
    ]
    made[f"DestinationCreate{n}"] = create

    update = _envelope(written[f"DestinationUpdate{name(MOULD)}"], type, label)
    if config:
        update["properties"]["config"] = {"$ref": f"{REF}{n}ConfigUpdate"}
    else:
        del update["properties"]["config"]
    update["properties"]["credentials"] = {"$ref": f"{REF}{n}CredentialsUpdate"}
    made[f"DestinationUpdate{n}"] = update
    return made


def _envelope(mould: Mapping[str, Any], type: str, label: str) -> dict[str, Any]:
    """The webhook's envelope for another type: its own ``type`` and docs label; the
    webhook's example left out."""
    envelope = copy.deepcopy(dict(mould))
    envelope.pop("example", None)
    envelope["x-docs-type"] = label
    envelope["properties"]["type"] |= {"enum": [type], "example": type}
    return envelope


def fields_object(fields: Sequence[Mapping[str, Any]], partial: str = "") -> dict[str, Any]:
    """A config or credentials object of a schema file's fields: required as the file
    says; with ``partial`` (what it is), the PATCH form, where every key is optional and
    null removes one (RFC 7396 merge-patch). Pure."""
    answer: dict[str, Any] = {"type": "object"}
    if partial:
        answer["description"] = (
            f"Partial {partial} for PATCH updates (RFC 7396 merge-patch): a key left out is "
            "kept, null removes it."
        )
    required = [f["key"] for f in fields if f.get("required")]
    if required and not partial:
        answer["required"] = required
    answer["properties"] = {f["key"]: field_property(f, nullable=bool(partial)) for f in fields}
    return answer


def field_property(field: Mapping[str, Any], *, nullable: bool = False) -> dict[str, Any]:
    """One field as a JSON Schema property: a string (every config and credential value
    is one), with its label, description, choices, pattern, lengths and default; a
    sensitive one is marked (format: password) and said to be obfuscated. Pure."""
    prop: dict[str, Any] = {"type": ["string", "null"] if nullable else "string"}
    if field.get("label"):
        prop["title"] = field["label"]
    choices = [o["value"] for o in field.get("options", ())]
    if not choices and field.get("type") == "checkbox":
        choices = list(CHECKBOX_VALUES)
    if choices:
        prop["enum"] = [*choices, None] if nullable else choices
    for ours, theirs in (
        ("pattern", "pattern"),
        ("minlength", "minLength"),
        ("maxlength", "maxLength"),
        ("default", "default"),
    ):
        if field.get(ours) is not None:
            prop[theirs] = field[ours]
    description = field.get("description", "")
    if field.get("sensitive"):
        prop["format"] = "password"
        description += OBFUSCATED
    if description:
        prop["description"] = description
    return prop
