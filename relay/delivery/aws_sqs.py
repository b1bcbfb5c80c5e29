"""The aws_sqs type: each event is one SendMessage to the destination's queue.

As Outpost's destawssqs: the event's data as the message body, and one message attribute,
``metadata`` (DataType String), holding the merged metadata (event-id, topic, timestamp,
delivery_metadata, the event's metadata) as a JSON object, written as Go's json.Marshal
writes it; no other attribute, group id, deduplication id or delay. The request goes to
the queue URL's scheme and host (``config.endpoint`` instead, when set: a VPC endpoint,
an emulator), in the region its host names (``sqs.<region>.amazonaws.com``), else
us-east-1. ``credentials.session``, a session token, is read as Outpost reads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, urlsplit

from relay.delivery import aws, registry
from relay.delivery.base import (
    DeliveryContext,
    Endpoint,
    Schema,
    Target,
    json_map,
    message_metadata,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed

REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")


def queue_endpoint(queue_url: str) -> tuple[str, str]:
    """The endpoint (scheme and host) and region of a queue URL."""
    parts = urlsplit(queue_url)
    labels = (parts.hostname or "").split(".")
    region = aws.DEFAULT_REGION
    if "amazonaws.com" in parts.netloc and len(labels) > 2 and REGION.match(labels[1]):
        region = labels[1]
    return f"{parts.scheme}://{parts.netloc}", region


def console_url(queue_url: str) -> str | None:
    """Outpost's link to the queue in the AWS console (queues on sqs.<region>.amazonaws.com)."""
    if ".amazonaws.com/" not in queue_url or "sqs." not in queue_url:
        return None
    labels = (urlsplit(queue_url).hostname or "").split(".")
    if len(labels) < 3 or labels[0] != "sqs":
        return None
    region = labels[1]
    return (
        f"https://{region}.console.aws.amazon.com/sqs/v3/home?region={region}"
        f"#/queues/{quote_plus(queue_url)}"
    )


class SqsPublisher(aws.AwsPublisher):
    operation = "send_message"

    def __init__(self, queue_url: str, spec: aws.ClientSpec, context: DeliveryContext) -> None:
        super().__init__(spec, context)
        self.queue_url = queue_url

    def request(self, claimed: Claimed) -> dict[str, Any]:
        metadata = message_metadata(claimed, milliseconds=self.context.milliseconds)
        return {
            "QueueUrl": self.queue_url,
            "MessageBody": claimed.body,
            "MessageAttributes": {
                "metadata": {"DataType": "String", "StringValue": aws.go_json(metadata)}
            },
        }

    def summary(self, request: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
        return {"message_id": answer.get("MessageId")}


class SqsProvider(aws.AwsProvider):
    def __init__(self, schema: Schema) -> None:
        super().__init__(schema)
        # Read though Outpost's metadata does not list it: a secret all the same.
        self._sensitive_credentials |= {"session"}

    def addresses(
        self, config: Mapping[str, str], credentials: Mapping[str, str]
    ) -> list[Endpoint]:
        # Without an endpoint the request goes to the queue URL's host (queue_endpoint).
        if config.get("endpoint"):
            return super().addresses(config, credentials)
        return aws.url_address(config.get("queue_url", ""), "config.queue_url")

    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        queue_url = config.get("queue_url", "")
        return Target(queue_url, console_url(queue_url))

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> SqsPublisher:
        config, credentials = json_map(claimed.config), json_map(claimed.credentials)
        queue_url = config["queue_url"]
        endpoint, region = queue_endpoint(queue_url)
        spec = aws.ClientSpec(
            service="sqs",
            region=region,
            key=credentials.get("key", ""),
            secret=credentials.get("secret", ""),
            session_token=credentials.get("session"),
            endpoint=config.get("endpoint") or endpoint,
        )
        return SqsPublisher(queue_url, spec, context)


PROVIDER = SqsProvider(registry.schema("aws_sqs"))
