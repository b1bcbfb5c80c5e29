"""relay routes as Outpost does: 230 cases of a destination's topics and filter and an
event, each answered by Outpost's own code (its matcher, internal/simplejsonmatch, and
Destination.MatchEvent). The cases (data/outpost-filter-cases.json) come from Outpost's
matcher tests (TestMatch, TestMatchNot), its filter documentation (doc#) and its topic
rules (topic#); relay must give Outpost's answer on every one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relay.routing import filter_matches, filter_problems, filter_subject, route

CASES = json.loads((Path(__file__).parent / "data" / "outpost-filter-cases.json").read_text())

# The file gives each event's topic, metadata and data, not its id and time. The
# documentation's examples filter on both: doc#18 expects an id starting "evt_fp", and
# doc#14 and doc#15 a time in 2026 before December.
EVENT_ID = "evt_fp_0001"
EVENT_TIME = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@dataclass
class Destination:
    id: str
    topics: list[str]
    enabled: bool = True


def relay_routes(case: dict[str, Any]) -> bool:
    event = case["event"]
    chosen = route([Destination("d", case["topics"])], event["topic"])
    subject = filter_subject(
        EVENT_ID, event["topic"], event.get("metadata", {}), event.get("data", {}), EVENT_TIME
    )
    return chosen == ["d"] and filter_matches(case["filter"], subject)


def test_the_cases_are_all_there() -> None:
    assert len(CASES) == 230
    assert len({c["case"] for c in CASES}) == 230


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_relay_routes_as_outpost(case: dict[str, Any]) -> None:
    if case["event"] is None:
        # A filter Outpost's matcher can never pass (an unknown operator): relay refuses
        # to store it, naming the operator, rather than keep a destination that gets
        # nothing.
        assert case["outpost_matches"] is False
        assert filter_problems(case["filter"])
        return
    assert relay_routes(case) is case["outpost_matches"]


def test_the_time_is_seen_in_utc_to_the_second() -> None:
    subject = filter_subject(
        "e", "t", {}, {}, datetime.fromisoformat("2026-03-01T13:30:15.250+01:00")
    )
    assert subject["time"] == "2026-03-01T12:30:15Z"
    assert filter_matches({"time": {"$gte": "2026-03-01T12:30:15Z"}}, subject)
    assert not filter_matches({"time": {"$gt": "2026-03-01T12:30:15Z"}}, subject)
