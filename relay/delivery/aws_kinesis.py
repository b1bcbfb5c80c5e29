"""The aws_kinesis type: each event is one PutRecord on the destination's stream.

As Outpost's destawskinesis: the record is ``{"data": <the event's data>, "metadata":
{<merged metadata>}}`` (``delivery.aws_kinesis.metadata_in_payload``, on by default; off:
the data alone). Relay writes the data's bytes as the producer sent them, where Outpost
writes them compacted; the metadata as Go writes a map (keys sorted). The partition key
is ``config.partition_key_template`` (JMESPath) over ``{"metadata": ..., "data": ...}``
(over the data alone with the metadata out of the payload), the event id when there is
no template or it gives nothing. ``config.endpoint`` points the client elsewhere (a VPC
endpoint, an emulator).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from relay.delivery import aws, keytemplates, registry
from relay.delivery.base import (
    DeliveryContext,
    Target,
    json_map,
    message_metadata,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed


def record(body: str, metadata: Mapping[str, str]) -> bytes:
    """Outpost's envelope, around the producer's bytes."""
    return b'{"data":' + body.encode() + b',"metadata":' + aws.go_json(metadata).encode() + b"}"


class KinesisPublisher(aws.AwsPublisher):
    operation = "put_record"

    def __init__(
        self,
        stream: str,
        template: str,
        metadata_in_payload: bool,
        spec: aws.ClientSpec,
        context: DeliveryContext,
    ) -> None:
        super().__init__(spec, context)
        self.stream = stream
        self.template = template
        self.metadata_in_payload = metadata_in_payload

    def request(self, claimed: Claimed) -> dict[str, Any]:
        metadata = message_metadata(claimed, milliseconds=self.context.milliseconds)
        key = claimed.event_id
        if self.template:
            # json, not orjson: it reads integers of any size, as Go reads them (floats).
            data = json.loads(claimed.body)
            document = {"metadata": metadata, "data": data} if self.metadata_in_payload else data
            key = keytemplates.partition_key(self.template, document, claimed.event_id)
        return {
            "StreamName": self.stream,
            "Data": (
                record(claimed.body, metadata)
                if self.metadata_in_payload
                else claimed.body.encode()
            ),
            "PartitionKey": key,
        }

    def summary(self, request: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "shard_id": answer.get("ShardId"),
            "sequence_number": answer.get("SequenceNumber"),
            "partition_key": request["PartitionKey"],
        }


class KinesisProvider(aws.AwsProvider):
    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        return Target(f"{config.get('stream_name', '')} in {config.get('region', '')}")

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> KinesisPublisher:
        config, credentials = json_map(claimed.config), json_map(claimed.credentials)
        spec = aws.ClientSpec(
            service="kinesis",
            region=config["region"],
            key=credentials.get("key", ""),
            secret=credentials.get("secret", ""),
            session_token=credentials.get("session"),
            endpoint=config.get("endpoint") or None,
        )
        return KinesisPublisher(
            config["stream_name"],
            config.get("partition_key_template", ""),
            context.settings.aws_kinesis.metadata_in_payload,
            spec,
            context,
        )


PROVIDER = KinesisProvider(registry.schema("aws_kinesis"))
