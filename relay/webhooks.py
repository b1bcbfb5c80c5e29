"""What a webhook destination may be: its URL and its custom headers. Pure rules, shared
by the config file and the API, so both refuse the same things."""

from __future__ import annotations

import re
from collections.abc import Mapping

from yarl import URL

# Headers the HTTP layer owns, or whose value relay fixes (the body is JSON): nothing
# else (custom headers, metadata, a pinned system header name) may write them, or
# framing would break.
HTTP_OWNED = frozenset(
    ("content-type", "content-length", "host", "connection", "transfer-encoding", "user-agent")
)
# Headers relay sets on every delivery: a destination cannot replace them, or signatures
# and framing would break.
RESERVED_HEADERS = HTTP_OWNED | {"webhook-id", "webhook-timestamp", "webhook-signature"}
HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# What Outpost accepts as a system header name an operator pins.
PINNED_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
MAX_URL_LENGTH = 2048


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a destination URL, or None."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        parsed = None
    if (
        parsed is None
        or parsed.scheme not in ("http", "https")
        or not parsed.host
        or len(url) > MAX_URL_LENGTH
        or any(c.isspace() for c in url)
    ):
        return "must be an http:// or https:// URL with a host"
    return None


def header_problems(headers: Mapping[str, str]) -> list[str]:
    """One message per custom header that cannot be sent, each naming the header."""
    problems = []
    for name, value in headers.items():
        lowered = name.lower()
        if not HEADER_NAME.match(name):
            problems.append(f"{name!r} is not a valid header name")
        elif lowered in RESERVED_HEADERS or lowered.startswith("x-outpost-"):
            problems.append(f"{name!r} is set by relay and cannot be overridden")
        elif "\r" in value or "\n" in value:
            problems.append(f"{name!r} must not contain line breaks")
    return problems
