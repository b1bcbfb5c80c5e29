"""The headers of a webhook delivery, in the two formats Outpost sends. Pure; each format
is built once from the settings, since delivery sends thousands a second.

- ``standard`` is Outpost's standard mode (``DESTINATIONS_WEBHOOK_MODE=standard``):
  ``webhook-id``, ``webhook-timestamp`` (Unix seconds), ``webhook-signature`` (Standard
  Webhooks), then ``webhook-topic`` and ``webhook-<key>`` for each metadata key, then the
  event's own metadata again without the prefix.
- ``outpost`` is Outpost's default mode: ``x-outpost-event-id``, ``x-outpost-topic``,
  ``x-outpost-timestamp`` (RFC 3339 UTC to the second), ``x-outpost-<key>`` for each
  metadata key, and ``x-outpost-signature: v0=<hex HMAC-SHA256 of the body>``, with the
  prefix, names, templates, encoding and algorithm the operator configured.

In both, the metadata is Outpost's merge: the system keys (``event-id``, ``topic``,
``timestamp``, and ``timestamp-ms`` if asked for), then the destination's
delivery_metadata over them, then the event's metadata over both.

Where relay departs from Outpost, it is to keep a delivery verifiable and well-formed:
header names are written in lower case (the same headers: Go sends them capitalised);
a metadata entry that cannot be an HTTP header (a key that is not a header name, a value
with a line break or other control character) is left out, where Outpost's request
would fail on every attempt; a metadata key never lands on a header the HTTP layer owns
or on ``content-type``;
in standard mode a metadata key never replaces the id, timestamp or signature header,
and the unprefixed copies never replace a header already set. Outpost writes metadata
from a Go map, in random order; relay writes it in merge order, so when two keys give
the same header the later one wins every time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from relay import signing, sigtemplate, webhooks
from relay.delivery.base import make_metadata

if TYPE_CHECKING:
    from relay.config import DeliverySettings

Mode = Literal["standard", "outpost"]
MODES: tuple[Mode, ...] = ("standard", "outpost")
DEFAULT_CONTENT_TEMPLATE = "{{.Body}}"
DEFAULT_HEADER_TEMPLATE = 'v0={{.Signatures | join ","}}'
# Outpost's system metadata keys that have a header directive (pin or disable).
SYSTEM_KEYS = ("event-id", "signature", "timestamp", "topic")
# RFC 9110's token (a header name), and what a header value cannot hold (tab aside).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def sendable(metadata: Mapping[str, str]) -> Mapping[str, str]:
    """The entries of ``metadata`` that can travel as HTTP headers."""
    if all(_TOKEN.fullmatch(k) and not _CONTROL.search(v) for k, v in metadata.items()):
        return metadata  # as a rule: nothing to copy
    return {k: v for k, v in metadata.items() if _TOKEN.fullmatch(k) and not _CONTROL.search(v)}


def merged_metadata(
    event_id: str,
    topic: str,
    now: float,
    delivery_metadata: Mapping[str, str],
    metadata: Mapping[str, str],
    *,
    milliseconds: bool,
) -> dict[str, str]:
    """Outpost's ``MakeMetadata`` of the entries that can travel as HTTP headers."""
    return make_metadata(
        event_id,
        topic,
        now,
        sendable(delivery_metadata),
        sendable(metadata),
        milliseconds=milliseconds,
    )


@dataclass(frozen=True, slots=True)
class StandardFormat:
    """Outpost's standard mode. Only the prefix is configurable, as in Outpost."""

    prefix: str = "webhook-"
    unprefixed_metadata: bool = True
    milliseconds: bool = False
    _id: str = field(init=False)
    _timestamp: str = field(init=False)
    _signature: str = field(init=False)

    def __post_init__(self) -> None:
        prefix = self.prefix.lower()
        object.__setattr__(self, "_id", prefix + "id")
        object.__setattr__(self, "_timestamp", prefix + "timestamp")
        object.__setattr__(self, "_signature", prefix + "signature")

    def header_name(self, key: str) -> str:
        """The header that carries ``id``, ``timestamp`` or ``signature``."""
        return self.prefix.lower() + key

    def write(
        self,
        headers: dict[str, str],
        *,
        event_id: str,
        topic: str,
        metadata: Mapping[str, str],
        delivery_metadata: Mapping[str, str],
        secrets: Sequence[str],
        now: float,
        body: bytes,
    ) -> None:
        """Add this format's headers to ``headers`` (which holds what comes first:
        content-type and the destination's custom headers)."""
        unix = int(now)
        headers[self._id] = event_id
        headers[self._timestamp] = str(unix)
        headers[self._signature] = signing.standard_signature(secrets, event_id, unix, body)
        merged = merged_metadata(
            event_id, topic, now, delivery_metadata, metadata, milliseconds=self.milliseconds
        )
        fixed = (self._id, self._timestamp, self._signature)
        prefix = self.prefix.lower()
        for key, value in merged.items():
            if key == "event-id" or key == "timestamp":
                continue  # carried by the id and timestamp headers
            name = prefix + key.lower()
            if name not in fixed and name not in webhooks.HTTP_OWNED:
                headers[name] = value
        if self.unprefixed_metadata:
            for key, value in sendable(metadata).items():
                name = key.lower()
                if name not in headers and name not in webhooks.HTTP_OWNED:
                    headers[name] = value


@dataclass(frozen=True, slots=True)
class OutpostFormat:
    """Outpost's default mode. ``names`` maps a system key (``event-id``, ``signature``,
    ``timestamp``, ``topic``) to a pinned header name, or to "" to send no such header;
    a key it lacks gets ``<prefix><key>``."""

    prefix: str = "x-outpost-"
    names: Mapping[str, str] = field(default_factory=dict)
    content_template: str = DEFAULT_CONTENT_TEMPLATE
    header_template: str = DEFAULT_HEADER_TEMPLATE
    encoding: signing.Encoding = "hex"
    algorithm: signing.Algorithm = "hmac-sha256"
    milliseconds: bool = False
    # Worked out once from the above.
    _headers: dict[str, str] = field(init=False)  # system key -> header name ("": none)
    _content: sigtemplate.Template | None = field(init=False)  # None: the body alone
    _header: sigtemplate.Template | None = field(init=False)  # None: "v0=" + join(",")

    def __post_init__(self) -> None:
        problems = outpost_problems(self.prefix, self.names)
        if problems:
            raise ValueError("; ".join(problems))
        prefix = self.prefix.lower()
        resolved = {
            key: self.names[key].lower() if key in self.names else prefix + key
            for key in SYSTEM_KEYS
        }
        content = sigtemplate.parse(self.content_template, "content")
        header = sigtemplate.parse(self.header_template, "header")
        body_only = content.parts == (sigtemplate.Field(sigtemplate.BODY),)
        default_header = header.parts == ("v0=", sigtemplate.Join(","))
        object.__setattr__(self, "_headers", resolved)
        object.__setattr__(self, "_content", None if body_only else content)
        object.__setattr__(self, "_header", None if default_header else header)

    def write(
        self,
        headers: dict[str, str],
        *,
        event_id: str,
        topic: str,
        metadata: Mapping[str, str],
        delivery_metadata: Mapping[str, str],
        secrets: Sequence[str],
        now: float,
        body: bytes,
    ) -> None:
        """Add this format's headers to ``headers`` (which holds what comes first:
        content-type and the destination's custom headers)."""
        merged = merged_metadata(
            event_id, topic, now, delivery_metadata, metadata, milliseconds=self.milliseconds
        )
        system = self._headers
        prefix = self.prefix.lower()
        for key, value in merged.items():
            # Only the exact system keys follow a directive, as in Outpost (the signature
            # is not metadata: a "signature" key is prefix + key, overwritten below).
            name = system[key] if key in system and key != "signature" else prefix + key.lower()
            if name and name not in webhooks.HTTP_OWNED:
                headers[name] = value
        name = system["signature"]
        if name:
            value = self.signature(secrets, event_id=event_id, topic=topic, now=now, body=body)
            if value:  # as Outpost: a template that renders nothing sends no header
                headers[name] = value

    def header_name(self, key: str) -> str:
        """The header that carries a system key (``event-id``, ``signature``, ``timestamp``,
        ``topic``); "" when it is not sent."""
        return self._headers[key]

    def signature(
        self, secrets: Sequence[str], *, event_id: str, topic: str, now: float, body: bytes
    ) -> str:
        """The signature header's value: the header template over one signature of the
        rendered content template per secret."""
        unix = int(now)
        content = (
            body
            if self._content is None
            else self._content.render(event_id=event_id, topic=topic, unix=unix, body=body)
        )
        signatures = signing.outpost_signatures(secrets, content, self.algorithm, self.encoding)
        if self._header is None:
            return "v0=" + ",".join(signatures)
        rendered = self._header.render(
            event_id=event_id, topic=topic, unix=unix, signatures=signatures
        )
        return rendered.decode()


def outpost_problems(prefix: str, names: Mapping[str, str]) -> list[str]:
    """Why these header settings cannot be used, as Outpost checks them at start: each
    pinned name a valid header name the HTTP layer does not own, and no two system headers
    under one name. Pure."""
    problems = []
    if not webhooks.HEADER_NAME.match(prefix or "x"):
        problems.append(f"header prefix {prefix!r} may hold only letters, digits, - and _")
    seen: dict[str, str] = {}
    for key in SYSTEM_KEYS:
        name = names.get(key)
        if name == "":
            continue  # not sent
        if name is not None:
            if not webhooks.PINNED_HEADER_NAME.match(name):
                problems.append(
                    f"{key} header name {name!r} must start with a letter or digit and hold "
                    "only letters, digits, - and _"
                )
                continue
            if name.lower() in webhooks.HTTP_OWNED:
                problems.append(f"{key} header name {name!r} is a header relay cannot replace")
                continue
        effective = (name if name is not None else prefix + key).lower()
        if effective in seen:
            problems.append(
                f"the {seen[effective]} and {key} headers are both named {effective!r}; "
                "pin distinct names or disable one"
            )
        seen[effective] = key
    return problems


Format = StandardFormat | OutpostFormat


@dataclass(frozen=True, slots=True)
class Formats:
    """Both formats, and the one a destination without a mode of its own gets."""

    mode: Mode = "standard"
    standard: StandardFormat = StandardFormat()
    outpost: OutpostFormat = OutpostFormat()

    def for_mode(self, mode: str | None) -> Format:
        """The format for a destination's mode (None: the global mode)."""
        return self.outpost if (mode or self.mode) == "outpost" else self.standard


def from_settings(delivery: DeliverySettings) -> Formats:
    """The formats ``delivery.webhook_mode`` and ``[delivery.webhook]`` describe."""
    webhook = delivery.webhook
    outpost = webhook.outpost
    names = {
        key: name
        for key, name in (
            ("event-id", outpost.event_id_header_name),
            ("signature", outpost.signature_header_name),
            ("timestamp", outpost.timestamp_header_name),
            ("topic", outpost.topic_header_name),
        )
        if name is not None
    }
    return Formats(
        mode=delivery.webhook_mode,
        standard=StandardFormat(
            prefix=webhook.standard.header_prefix,
            unprefixed_metadata=webhook.standard.unprefixed_metadata,
            milliseconds=webhook.include_millisecond_timestamp,
        ),
        outpost=OutpostFormat(
            prefix=outpost.header_prefix,
            names=names,
            content_template=outpost.signature_content_template,
            header_template=outpost.signature_header_template,
            encoding=outpost.signature_encoding,
            algorithm=outpost.signature_algorithm,
            milliseconds=webhook.include_millisecond_timestamp,
        ),
    )
