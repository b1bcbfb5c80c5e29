"""Request bodies: read them (the one place that does), parse JSON and validate it into a
model, with one message per bad field."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, BeforeValidator, StrictStr, ValidationError

from relay.appkeys import SETTINGS
from relay.errors import BadRequest, RelayError, ValidationFailed

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class BodyTimeout(RelayError):
    """request body not received in time"""

    status = 408


class ClientGone(RelayError):
    """the client disconnected while sending the request body"""

    # Nothing reaches the client any more; the status is for the record only.
    status = 400


async def read_body(request: web.Request) -> bytes:
    """The request body, within server.body_timeout_seconds (408 after), at most
    server.max_body_bytes (413 past it).

    A failure here is the client's side of the connection, never the database's: a
    client that goes away mid-body is only worth a debug line."""
    seconds = request.app[SETTINGS].server.body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        # Before OSError: TimeoutError is one.
        log.info("request body from %s not received within %gs", request.remote, seconds)
        raise BodyTimeout(f"request body not received within {seconds:g} seconds") from None
    except OSError as exc:
        # The connection was lost (aiohttp sets ConnectionResetError on the payload).
        log.debug("client %s disconnected while sending its body: %r", request.remote, exc)
        raise ClientGone() from None
    except web.RequestPayloadError as exc:
        # Bytes that do not decode as the headers say (Content-Encoding, chunking).
        reason = getattr(exc.__cause__, "message", None) or "it is malformed"
        raise BadRequest(f"request body could not be read: {reason}") from None


async def read_json(request: web.Request) -> Any:
    raw = await read_body(request)
    if not raw:
        raise BadRequest("request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def outpost_string(value: object) -> str:
    """A JSON value as Outpost stores it in a map of strings (tenant and destination
    metadata, credentials): a string as it is, a boolean as true or false, null as "",
    an object or array as compact JSON (keys sorted, as Go writes maps). A number as its
    decimal text: 1000000, not Go's 1e+06."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _strings(value: object) -> object:
    if isinstance(value, dict):
        return {k: outpost_string(v) for k, v in value.items()}
    return value


def _strings_or_null(value: object) -> object:
    # A merge patch: null still removes the key.
    if isinstance(value, dict):
        return {k: None if v is None else outpost_string(v) for k, v in value.items()}
    return value


# Maps of strings that take any JSON values, converted as Outpost converts them.
StringMap = Annotated[dict[StrictStr, StrictStr], BeforeValidator(_strings)]
StringMapPatch = Annotated[dict[StrictStr, StrictStr | None], BeforeValidator(_strings_or_null)]


def field_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        kind = err["type"]
        if kind == "missing":
            problems.append(f"{loc} is required")
        elif kind in ("dict_type", "model_type"):
            problems.append(f"{loc} must be a JSON object")
        elif kind == "string_type":
            problems.append(f"{loc} must be a string")
        elif kind == "bool_type":
            problems.append(f"{loc} must be true or false")
        elif kind == "string_too_short":
            problems.append(f"{loc} must not be empty")
        elif kind == "value_error":
            problems.append(f"{loc} {err['ctx']['error']}")
        elif kind.startswith("datetime"):
            problems.append(f"{loc} must be an RFC 3339 date-time")
        else:
            problems.append(f"{loc}: {err['msg'].lower()}")
    return problems


def validate(model: type[M], payload: Any) -> M:
    if not isinstance(payload, dict):
        raise ValidationFailed(["body must be a JSON object"])
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ValidationFailed(field_problems(exc)) from None
