"""Outpost's signature templates: the part of Go's text/template that Outpost's defaults
and documentation use, and nothing more. Pure.

Outpost renders ``DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE`` (what is signed) and
``..._HEADER_TEMPLATE`` (the signature header's value) with Go's text/template and the
sprig functions. relay reads templates written for Outpost: literal text and these
actions, spaces inside the braces allowed:

- ``{{.Body}}`` (content template only): the request body as sent;
- ``{{.EventID}}`` and ``{{.Topic}}``;
- ``{{.Timestamp.Unix}}``: the delivery's time in Unix seconds;
- ``{{.Signatures | join ","}}`` (header template only, any separator without ``"`` or
  ``\\``): the signatures, the current secret's first.

Anything else is refused when the configuration is loaded, so a template relay would
render differently from Outpost never signs a delivery. That includes a bare
``{{.Timestamp}}``: Go prints it as ``time.String()``, with a reading of the process's
monotonic clock (``m=+12.3``) that no receiver can recompute.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["content", "header"]

BODY = "Body"
EVENT_ID = "EventID"
TOPIC = "Topic"
UNIX = "Timestamp.Unix"
SIGNATURES = "Signatures"

_FIELDS: dict[Kind, frozenset[str]] = {
    "content": frozenset((BODY, EVENT_ID, TOPIC, UNIX)),
    "header": frozenset((EVENT_ID, TOPIC, UNIX, SIGNATURES)),
}
_FIELD = re.compile(r"\.(Body|EventID|Topic|Timestamp\.Unix|Timestamp|Signatures)")
_JOIN = re.compile(r'\.Signatures\s*\|\s*join\s+(?:"([^"\\]*)"|`([^`]*)`)')
SUPPORTED = (
    "{{.Body}} (content only), {{.EventID}}, {{.Topic}}, {{.Timestamp.Unix}}, "
    '{{.Signatures | join ","}} (header only)'
)


@dataclass(frozen=True, slots=True)
class Join:
    """``{{.Signatures | join sep}}``."""

    separator: str


@dataclass(frozen=True, slots=True)
class Field:
    """``{{.Body}}``, ``{{.EventID}}``, ``{{.Topic}}`` or ``{{.Timestamp.Unix}}``."""

    name: str


@dataclass(frozen=True, slots=True)
class Template:
    source: str
    parts: tuple[str | Field | Join, ...]

    def render(
        self,
        *,
        event_id: str,
        topic: str,
        unix: int,
        body: bytes = b"",
        signatures: Sequence[str] = (),
    ) -> bytes:
        """The rendered template, as bytes (the body is bytes and is signed as such)."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part.encode())
            elif isinstance(part, Join):
                out.append(part.separator.join(signatures).encode())
            elif part.name == BODY:
                out.append(body)
            elif part.name == EVENT_ID:
                out.append(event_id.encode())
            elif part.name == TOPIC:
                out.append(topic.encode())
            else:
                out.append(str(unix).encode())
        return b"".join(out)


class TemplateError(ValueError):
    """A template relay does not render the way Outpost would; the message says why."""


def parse(source: str, kind: Kind) -> Template:
    """The template, or a TemplateError naming the action relay does not support."""
    if not source:
        raise TemplateError("must not be empty")
    parts: list[str | Field | Join] = []
    rest = source
    while rest:
        start = rest.find("{{")
        if start < 0:
            parts.append(rest)
            break
        if start:
            parts.append(rest[:start])
        end = rest.find("}}", start + 2)
        if end < 0:
            raise TemplateError(f"{rest[start:]!r}: an action opened with {{{{ is never closed")
        parts.append(_action(rest[start : end + 2], kind))
        rest = rest[end + 2 :]
    return Template(source, tuple(parts))


def _action(action: str, kind: Kind) -> Field | Join:
    inner = action[2:-2]
    if inner.startswith("-") or inner.endswith("-"):
        raise TemplateError(f"{action}: trim markers ({{{{- and -}}}}) are not supported")
    inner = inner.strip()
    joined = _JOIN.fullmatch(inner)
    field = _FIELD.fullmatch(inner)
    name = SIGNATURES if joined else field.group(1) if field else None
    if name == "Timestamp":
        raise TemplateError(
            f"{action}: Go prints a bare .Timestamp with a process-local clock reading no "
            "receiver can recompute; use {{.Timestamp.Unix}}"
        )
    if name == SIGNATURES and not joined:
        raise TemplateError(f'{action}: write the signatures as {{{{.Signatures | join ","}}}}')
    if name is None:
        raise TemplateError(f"{action} is not supported; relay renders {SUPPORTED}")
    if name not in _FIELDS[kind]:
        raise TemplateError(f"{action}: .{name} is not available in the {kind} template")
    if joined:
        separator = joined.group(1) if joined.group(1) is not None else joined.group(2)
        return Join(separator)
    return Field(name)
