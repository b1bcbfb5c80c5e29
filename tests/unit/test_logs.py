"""Structured logs: one JSON object per line, with extra fields kept."""

from __future__ import annotations

import logging

import orjson

from relay.logs import JsonFormatter


def test_json_formatter_emits_one_object_with_extras() -> None:
    record = logging.makeLogRecord(
        {
            "name": "relay.dispatcher",
            "levelname": "WARNING",
            "levelno": logging.WARNING,
            "msg": "claim failed (%s)",
            "args": ("boom",),
            "delivery_id": 42,
        }
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "relay.dispatcher"
    assert entry["message"] == "claim failed (boom)"
    assert entry["delivery_id"] == 42
    assert entry["time"].endswith("+00:00")
