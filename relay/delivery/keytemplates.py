"""Outpost's JMESPath key templates: a Kinesis record's partition key and an S3 object's
key, computed from the event as Outpost computes them (its ``partitionkey.Evaluate`` and
the S3 provider's ``makeKey``), down to how Go prints a value that is not a string.

JMESPath is botocore's own dependency, so the ``aws`` extra brings it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.parser


class TemplateError(ValueError):
    """A template that gives no key for this event (Outpost's format error)."""


@functools.lru_cache(maxsize=256)
def compiled(template: str) -> jmespath.parser.ParsedResult:
    """The parsed template; TemplateError when it is not JMESPath."""
    try:
        return jmespath.compile(template)
    except jmespath.exceptions.JMESPathError as exc:
        raise TemplateError(f"not a JMESPath expression: {exc}") from None


def problem(template: str) -> str | None:
    """Why ``template`` cannot be compiled, or None."""
    try:
        compiled(template)
    except TemplateError as exc:
        return str(exc)
    return None


def search(template: str, document: Mapping[str, Any]) -> Any:
    try:
        return compiled(template).search(document)
    except jmespath.exceptions.JMESPathError as exc:
        raise TemplateError(f"{template!r} failed on this event: {exc}") from None


def partition_key(template: str, document: Mapping[str, Any], fallback: str) -> str:
    """Outpost's partition key: the template's value over ``document``; ``fallback`` (the
    event id) for no template, a null or empty result, or a template that fails."""
    if not template:
        return fallback
    try:
        value = search(template, document)
    except TemplateError:
        return fallback
    if value is None or value == "":
        return fallback
    return go_string(value)


def object_key(template: str, document: Mapping[str, Any]) -> str:
    """Outpost's S3 object key: the template's value; TemplateError when it fails or
    gives null or an empty string."""
    value = search(template, document)
    if value is None:
        raise TemplateError(f"{template!r} gave null for this event")
    key = go_string(value)
    if not key:
        raise TemplateError(f"{template!r} gave an empty key for this event")
    return key


def time_fields(when: datetime) -> dict[str, str]:
    """An instant as Outpost's S3 key templates see it (``time.year``, ...), in UTC."""
    return {
        "year": f"{when.year:04d}",
        "month": f"{when.month:02d}",
        "day": f"{when.day:02d}",
        "hour": f"{when.hour:02d}",
        "minute": f"{when.minute:02d}",
        "second": f"{when.second:02d}",
        "date": when.strftime("%Y-%m-%d"),
        "datetime": when.strftime("%Y-%m-%dT%H:%M:%S"),
        "unix": str(int(when.timestamp())),
        "rfc3339": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rfc3339_nano": rfc3339_nano(when),
    }


def rfc3339_nano(when: datetime) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: the fraction's trailing zeros dropped, none
    when it is zero."""
    fraction = f"{when.microsecond:06d}".rstrip("0")
    return when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


# --- Go's fmt ----------------------------------------------------------------------------


def go_string(value: Any) -> str:
    """A template's value as Outpost turns it into a key: a string as it is, numbers
    with ``%g``, booleans as true/false, anything else with ``%v``."""
    return value if isinstance(value, str) else go_value(value)


def go_value(value: Any) -> str:
    """Go's ``%v`` of a value decoded from JSON (numbers are float64 to Go)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return go_float(float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if isinstance(value, dict):
        # fmt prints a map's keys sorted.
        return "map[" + " ".join(f"{k}:{go_value(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def go_float(x: float) -> str:
    """Go's ``%g`` (and ``%v``) of a float64: the shortest digits that read back as it,
    in exponent form when the exponent is below -4 or 6 and above (``1e+06``)."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    _, digits, exponent = Decimal(repr(abs(x))).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # where the decimal point goes, from the first digit
    e10 = point - 1
    minus = "-" if x < 0 else ""
    if e10 < -4 or e10 >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if e10 < 0 else '+'}{abs(e10):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return minus + text + "0" * (point - len(text))
    return f"{minus}{text[:point]}.{text[point:]}"
