"""The OpenAPI document relay serves (relay/api/openapi.py): valid OpenAPI 3.1, every
destination type in each polymorphic schema, and each type's fields as its schema file
says. (tests/integration/test_openapi.py validates the API's real answers against it.)"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from relay.api import openapi
from relay.delivery import registry

SPEC: dict[str, Any] = orjson.loads(openapi.document())
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]
REF = "#/components/schemas/"


def test_the_document_is_valid_openapi_3_1() -> None:
    assert SPEC["openapi"] == "3.1.0"
    errors = [e.message for e in OpenAPIV31SpecValidator(SPEC).iter_errors()]
    assert errors == []


@pytest.mark.parametrize("kind", ["", "Create", "Update"])
def test_each_polymorphic_destination_lists_every_type(kind: str) -> None:
    polymorphic = SCHEMAS[f"Destination{kind}"]
    mapping = polymorphic["discriminator"]["mapping"]
    assert polymorphic["discriminator"]["propertyName"] == "type"
    assert list(mapping) == list(registry.TYPES)
    assert [one["$ref"] for one in polymorphic["oneOf"]] == list(mapping.values())
    for type, ref in mapping.items():
        variant = SCHEMAS[ref.removeprefix(REF)]
        assert variant["properties"]["type"]["enum"] == [type]
        # The discriminator needs it in every variant, as Outpost's does.
        assert "type" in variant["required"]


def test_outposts_types_have_outposts_schema_names() -> None:
    mapping = SCHEMAS["Destination"]["discriminator"]["mapping"]
    assert mapping["aws_sqs"] == REF + "DestinationAWSSQS"
    assert mapping["gcp_pubsub"] == REF + "DestinationGCPPubSub"
    assert mapping["nats_jetstream"] == REF + "DestinationNATSJetStream"
    assert {"AWSS3Config", "AzureServiceBusCredentials", "KafkaConfigUpdate"} <= set(SCHEMAS)
    assert "HookdeckConfig" not in SCHEMAS, "hookdeck has no config fields (as in Outpost's)"
    assert SCHEMAS["DestinationType"]["enum"] == list(registry.TYPES)


@pytest.mark.parametrize("type", [t for t in registry.TYPES if t != openapi.MOULD])
def test_a_types_config_and_credentials_are_its_schema_files(type: str) -> None:
    described = registry.schema(type).document
    name = openapi.name(type)
    for section, suffix in (("config_fields", "Config"), ("credential_fields", "Credentials")):
        fields = described.get(section, [])
        if not fields and suffix == "Config":
            assert f"{name}Config" not in SCHEMAS  # as Outpost's HookdeckConfig is not
            continue
        whole, partial = SCHEMAS[f"{name}{suffix}"], SCHEMAS[f"{name}{suffix}Update"]
        assert list(whole["properties"]) == [f["key"] for f in fields]
        assert whole.get("required", []) == [f["key"] for f in fields if f.get("required")]
        assert "required" not in partial
        for f in fields:
            shown = whole["properties"][f["key"]]
            assert shown["description"].startswith(f["description"])
            assert (shown.get("format") == "password") == bool(f.get("sensitive"))
            assert shown.get("pattern") == f.get("pattern")
            assert partial["properties"][f["key"]]["type"] == ["string", "null"]


@pytest.mark.parametrize("type", list(registry.TYPES))
def test_creating_requires_config_and_credentials_when_a_field_of_them_is(type: str) -> None:
    described = registry.schema(type).document
    create = SCHEMAS[f"DestinationCreate{openapi.name(type)}"]
    for section, key in (("config_fields", "config"), ("credential_fields", "credentials")):
        needed = any(f.get("required") for f in described.get(section, []))
        assert (key in create["required"]) == needed, (type, key)


def test_the_webhooks_hand_written_schemas_cover_its_schema_file() -> None:
    # relay's webhook fields are its own (webhook_mode, rotation), written in openapi.json;
    # they must still hold every field the schema file (the portal's form) names.
    described = registry.schema("webhook").document
    for section, suffix in (("config_fields", "Config"), ("credential_fields", "Credentials")):
        fields = described[section]
        written = SCHEMAS[f"Webhook{suffix}"]
        assert {f["key"] for f in fields} <= set(written["properties"])
        assert set(written.get("required", [])) == {f["key"] for f in fields if f["required"]}
    assert "webhook_mode" in SCHEMAS["WebhookConfig"]["properties"]
    assert "rotate_secret" in SCHEMAS["WebhookCredentialsUpdate"]["properties"]


def test_a_sensitive_field_is_marked_and_a_checkbox_takes_what_validation_takes() -> None:
    password = SCHEMAS["RabbitMQCredentials"]["properties"]["password"]
    assert password["format"] == "password" and "obfuscated" in password["description"]
    assert SCHEMAS["RabbitMQCredentials"]["properties"]["username"].get("format") is None
    assert SCHEMAS["KafkaConfig"]["properties"]["tls"]["enum"] == ["on", "true", "false"]
    assert SCHEMAS["KafkaConfig"]["properties"]["sasl_mechanism"]["enum"] == [
        "plain",
        "scram-sha-256",
        "scram-sha-512",
    ]
