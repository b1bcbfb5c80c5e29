"""The served OpenAPI document against the API's real answers: a destination of every
type, created, read, listed and changed through the API, and each request and answer
validated against the document's own schemas (DestinationCreate, Destination,
DestinationUpdate: the oneOf of the types, so the variant of the destination's type)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from relay.api import openapi
from relay.delivery import registry
from tests.support.receiver import Receiver, Reply
from tests.support.relay import admin_headers, make_settings

API = "/api/v1"
DOCUMENT = "urn:relay:openapi"
HOOKDECK_SOURCE = "src_openapi"
HOOKDECK_TOKEN = base64.b64encode(f"{HOOKDECK_SOURCE}:signing-key".encode()).decode()

# A destination of each type as a client creates one. Creating connects to nothing (the
# brokers are on loopback ports nothing listens on), but for Hookdeck's token check,
# which a stand-in answers.
CREATE: dict[str, dict[str, Any]] = {
    "webhook": {"config": {"url": "http://127.0.0.1:9/hook", "webhook_mode": "standard"}},
    "hookdeck": {"credentials": {"token": HOOKDECK_TOKEN}},
    "aws_sqs": {
        "config": {"queue_url": "http://127.0.0.1:9/000000000000/orders"},
        "credentials": {"key": "AKIAIOSFODNN7EXAMPLE", "secret": "wJalrXUtnFEMI/K7MDENG"},
    },
    "aws_kinesis": {
        "config": {
            "stream_name": "orders",
            "region": "us-east-1",
            "endpoint": "http://127.0.0.1:9",
            "partition_key_template": 'metadata."event-id"',
        },
        "credentials": {"key": "AKIAIOSFODNN7EXAMPLE", "secret": "wJalrXUtnFEMI/K7MDENG"},
    },
    "aws_s3": {
        "config": {"bucket": "orders", "region": "eu-west-1", "endpoint": "http://127.0.0.1:9"},
        "credentials": {"key": "AKIAIOSFODNN7EXAMPLE", "secret": "wJalrXUtnFEMI/K7MDENG"},
    },
    "gcp_pubsub": {
        "config": {"project_id": "relay-test", "topic": "orders", "endpoint": "127.0.0.1:9"},
        "credentials": {"service_account_json": '{"type": "service_account"}'},
    },
    "azure_servicebus": {
        "config": {"name": "orders"},
        "credentials": {
            "connection_string": "Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=send;"
            "SharedAccessKey=c2VjcmV0;UseDevelopmentEmulator=true"
        },
    },
    "rabbitmq": {
        "config": {"server_url": "127.0.0.1:9", "exchange": "orders", "tls": "false"},
        "credentials": {"username": "guest", "password": "guest"},
    },
    "kafka": {
        "config": {"brokers": "127.0.0.1:9", "topic": "orders", "sasl_mechanism": "plain"},
        "credentials": {"username": "relay", "password": "secret-password"},
    },
    "nats_jetstream": {"config": {"server_url": "127.0.0.1:9", "subject": "orders.{topic}"}},
    "redis_streams": {
        "config": {"server_url": "127.0.0.1:9", "stream": "orders:{topic}", "maxlen": "1000"},
        "credentials": {"password": "secret-password"},
    },
}


def validator(spec: dict[str, Any], schema: str) -> OAS31Validator:
    """A validator of ``#/components/schemas/<schema>`` in the document, its $refs read
    from the document."""
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return OAS31Validator(
        {"$ref": f"{DOCUMENT}#/components/schemas/{schema}"},
        registry=Registry().with_resource(DOCUMENT, resource),
        format_checker=OAS31Validator.FORMAT_CHECKER,
    )


def check(validator: OAS31Validator, value: Any, what: str) -> None:
    problems = [
        f"{'/'.join(map(str, reason.absolute_path))}: {reason.message}"
        for error in validator.iter_errors(value)
        for reason in (error.context or [error])  # a oneOf's: each variant's reasons
    ]
    assert not problems, f"{what} does not validate against the document:\n" + "\n".join(problems)


@pytest.fixture
async def hookdeck() -> AsyncIterator[Receiver]:
    """Hookdeck's API as far as the token check goes."""
    async with Receiver() as api:
        verify = f"/2025-01-01/sources/{HOOKDECK_SOURCE}/managed/verify"
        api.reply = lambda n, path: (
            Reply(200, '{"name": "orders-source"}') if path == verify else Reply(404, "{}")
        )
        yield api


async def test_every_types_destination_validates_against_the_served_document(
    start_relay: Any, database_url: str, http: Any, hookdeck: Receiver
) -> None:
    settings = make_settings(database_url, delivery={"hookdeck": {"api_url": hookdeck.url("")}})
    server = await start_relay(settings)

    async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with http.request(
            method, server.make_url(API + path), json=body, headers=admin_headers()
        ) as resp:
            return resp.status, await resp.json()

    async with http.get(server.make_url(API + "/openapi.json")) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        served = await resp.read()
    assert served == openapi.document()
    spec = orjson.loads(served)
    assert [e.message for e in OpenAPIV31SpecValidator(spec).iter_errors()] == []
    creating, shown, changing = (
        validator(spec, name) for name in ("DestinationCreate", "Destination", "DestinationUpdate")
    )

    assert list(CREATE) == list(registry.TYPES), "every type has a destination to create here"
    assert (await call("PUT", "/tenants/acme"))[0] == 201
    for type, values in CREATE.items():
        body = {"type": type, "topics": "*", "metadata": {"team": "platform"}} | values
        check(creating, body, f"the {type} creation request")
        status, created = await call("POST", "/tenants/acme/destinations", body)
        assert status == 201, created
        check(shown, created, f"the {type} destination created")

        path = f"/tenants/acme/destinations/{created['id']}"
        status, read = await call("GET", path)
        assert status == 200
        check(shown, read, f"the {type} destination read")

        patch = {"type": type, "topics": ["order.created"], "delivery_metadata": {"a": "b"}}
        check(changing, patch, f"the {type} change request")
        status, changed = await call("PATCH", path, patch)
        assert status == 200, changed
        check(shown, changed, f"the {type} destination changed")
        # The test can fail: without its config, or as another type, it is not valid.
        assert not shown.is_valid({k: v for k, v in changed.items() if k != "config"})
        assert not shown.is_valid(changed | {"type": "no-such-type"})

    status, listed = await call("GET", "/tenants/acme/destinations")
    assert status == 200 and sorted(d["type"] for d in listed) == sorted(registry.TYPES)
    for destination in listed:
        check(shown, destination, f"the {destination['type']} destination listed")
