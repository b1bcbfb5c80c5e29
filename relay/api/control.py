"""``delivery_control``: relay's extension to Outpost's destination and tenant bodies
(README, "Delivery control"). Checked here for both: every problem named by its field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

LIMIT_KEYS = ("rate_limit_per_second", "rate_limit_burst", "max_in_flight")
# A destination's keys; a tenant has the limits only (the default for its destinations).
CONTROL_KEYS = (*LIMIT_KEYS, "ordering_key", "ordering_on_failure")
# What a null (or a null delivery_control) sets a key back to.
CONTROL_DEFAULTS: dict[str, Any] = dict.fromkeys(CONTROL_KEYS) | {"ordering_on_failure": "block"}


def check_control(
    value: Any,
    problems: list[str],
    current: dict[str, Any] | None = None,
    keys: Sequence[str] = CONTROL_KEYS,
) -> dict[str, Any]:
    """``delivery_control`` (merged into ``current``, for a patch: a null key clears it,
    a null object clears all): each limit a positive number (the burst and the cap whole
    numbers), the burst only with a rate."""
    merged: dict[str, Any] = dict(current or {})
    if value is None:
        return {k: CONTROL_DEFAULTS[k] for k in keys}
    if not isinstance(value, dict):
        problems.append("delivery_control must be an object with " + ", ".join(keys))
        return merged
    for key, given in value.items():
        name = f"delivery_control.{key}"
        if key not in keys:
            problems.append(f"{name} is not a delivery control here; known: {', '.join(keys)}")
        elif given is None:
            merged[key] = CONTROL_DEFAULTS[key]
        elif key == "ordering_key":
            if not isinstance(given, str) or not 1 <= len(given) <= 200:
                problems.append(
                    f"{name} must be the name of a metadata key (1 to 200 characters), "
                    "or null for no ordering"
                )
            else:
                merged[key] = given
        elif key == "ordering_on_failure":
            if given not in ("block", "skip"):
                problems.append(f'{name} must be "block" or "skip"')
            else:
                merged[key] = given
        elif key == "rate_limit_per_second":
            if isinstance(given, bool) or not isinstance(given, int | float) or not given > 0:
                problems.append(f"{name} must be a number greater than 0 (deliveries a second)")
            elif given > 1_000_000:
                problems.append(f"{name} must be at most 1000000")
            else:
                merged[key] = float(given)
        elif isinstance(given, bool) or not isinstance(given, int) or not 1 <= given <= 1_000_000:
            problems.append(f"{name} must be a whole number from 1 to 1000000")
        else:
            merged[key] = given
    if merged.get("rate_limit_burst") is not None and merged.get("rate_limit_per_second") is None:
        problems.append(
            "delivery_control.rate_limit_burst needs delivery_control.rate_limit_per_second"
        )
    return merged
