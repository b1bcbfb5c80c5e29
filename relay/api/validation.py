"""Request bodies: parse JSON and validate it into a model, with one message per bad field."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from relay.errors import BadRequest, ValidationFailed

M = TypeVar("M", bound=BaseModel)


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise BadRequest("request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


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
