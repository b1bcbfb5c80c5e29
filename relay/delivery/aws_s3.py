"""The aws_s3 type: each event is one object (PutObject) in the destination's bucket.

As Outpost's destawss3: the object is the event's data (``Content-Type:
application/json``), with the merged metadata as its user metadata (``x-amz-meta-event-id``,
``-topic``, ``-timestamp``, ...), ``config.storage_class`` (STANDARD by default), and a
SHA-256 checksum S3 checks on arrival. Its key is ``config.key_template`` (JMESPath) over
``{"data", "metadata", "time"}``, where ``time`` is the event's time in UTC (``year``,
``month``, ``day``, ``hour``, ``minute``, ``second``, ``date``, ``datetime``, ``unix``,
``rfc3339``, ``rfc3339_nano``); by default ``<time.rfc3339_nano>_<event id>.json``. A
template that gives no key for an event fails its delivery at once (``format_error``),
not retried. ``config.endpoint`` points the client elsewhere with path-style addressing
(an emulator, an S3-compatible store).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from relay.delivery import aws, keytemplates, registry
from relay.delivery.base import (
    DeliveryContext,
    Target,
    json_map,
    message,
    message_metadata,
)

if TYPE_CHECKING:
    from relay.db.outbox import Claimed

DEFAULT_KEY_TEMPLATE = """join('', [time.rfc3339_nano, '_', metadata."event-id", '.json'])"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.cache
def storage_classes() -> dict[str, str]:
    """S3's storage classes as botocore's model of S3 lists them, by their lower case."""
    # The loader is synchronous (and caches): the model is read once per process.
    model = aws.session().get_component("data_loader").load_service_model("s3", "service-2")
    return {value.lower(): value for value in model["shapes"]["StorageClass"]["enum"]}


def storage_class(value: str) -> str | None:
    """The storage class ``value`` names (in any case; STANDARD when empty), or None."""
    return storage_classes().get(value.lower()) if value else "STANDARD"


def event_time(claimed: Claimed) -> datetime:
    """The event's time, to the microsecond (its publish time if it cannot be read)."""
    try:
        seconds = Decimal(claimed.event_time or "")
        whole = int(seconds // 1)
        micros = int((seconds - whole) * 1_000_000)
        return _EPOCH + timedelta(seconds=whole, microseconds=micros)
    except (InvalidOperation, ValueError, OverflowError):
        # Infinity, or a year Python cannot hold (a producer's SQL can write them).
        return claimed.published_at.astimezone(UTC)


class S3Publisher(aws.AwsPublisher):
    operation = "put_object"

    def __init__(
        self,
        bucket: str,
        template: str,
        storage: str,
        spec: aws.ClientSpec,
        context: DeliveryContext,
    ) -> None:
        super().__init__(spec, context)
        self.bucket = bucket
        self.template = template
        self.storage = storage

    def request(self, claimed: Claimed) -> dict[str, Any]:
        metadata = message_metadata(claimed, milliseconds=self.context.milliseconds)
        document = {
            # json, not orjson: it reads integers of any size, as Go reads them (floats).
            "data": json.loads(claimed.body),
            "metadata": metadata,
            "time": keytemplates.time_fields(event_time(claimed)),
        }
        body = claimed.body.encode()
        return {
            "Bucket": self.bucket,
            "Key": keytemplates.object_key(self.template, document),
            "Body": body,
            "ContentType": "application/json",
            "Metadata": metadata,
            "StorageClass": self.storage,
            "ChecksumAlgorithm": "SHA256",
            "ChecksumSHA256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
        }

    def summary(self, request: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
        return {"bucket": request["Bucket"], "key": request["Key"]}


class S3Provider(aws.AwsProvider):
    def problems(self, config: Mapping[str, str], credentials: Mapping[str, str]) -> list[str]:
        found = super().problems(config, credentials)
        if storage_class(config.get("storage_class", "")) is None:
            found.append(message("config.storage_class", "enum"))
        template = config.get("key_template", "")
        if template and keytemplates.problem(template) is not None:
            found.append(message("config.key_template", "pattern"))
        return found

    def target(
        self, config: Mapping[str, str], credentials: Mapping[str, str], topics: Sequence[str]
    ) -> Target:
        bucket, region = config.get("bucket", ""), config.get("region", "")
        return Target(
            f"{bucket} in {region}",
            f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?region={region}",
        )

    def publisher(self, claimed: Claimed, context: DeliveryContext) -> S3Publisher:
        config, credentials = json_map(claimed.config), json_map(claimed.credentials)
        endpoint = config.get("endpoint") or None
        spec = aws.ClientSpec(
            service="s3",
            region=config["region"],
            key=credentials.get("key", ""),
            secret=credentials.get("secret", ""),
            session_token=credentials.get("session"),
            endpoint=endpoint,
            path_style=endpoint is not None,
        )
        storage = storage_class(config.get("storage_class", ""))
        if storage is None:
            raise ValueError(f"config.storage_class {config['storage_class']!r} is not one of S3's")
        return S3Publisher(
            config["bucket"],
            config.get("key_template") or DEFAULT_KEY_TEMPLATE,
            storage,
            spec,
            context,
        )


PROVIDER = S3Provider(registry.schema("aws_s3"))
