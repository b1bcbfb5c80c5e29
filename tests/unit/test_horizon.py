"""The horizon watch's judgement, without a database: ages, ordering, one log per crossing."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from relay.db.horizon import Holder
from relay.horizon import HorizonWatch
from relay.metrics import Metrics

SESSION = Holder(
    kind="session",
    xid=1000,
    age_xids=50,
    age_seconds=400.0,
    pid=4242,
    usename="analyst",
    name="notebook",
    state="idle in transaction",
    since=None,
    query="SELECT secret FROM payroll",
)
SLOT = Holder(
    kind="replication_slot",
    xid=1000,
    age_xids=50,
    age_seconds=None,
    pid=None,
    usename=None,
    name="standby_1",
    state="physical active xmin",
    since=None,
    query=None,
)


def watch(warn_after: float = 300) -> HorizonWatch:
    return HorizonWatch(engine=None, warn_after=warn_after)  # type: ignore[arg-type]


def observe(w: HorizonWatch, holders: list[Holder]) -> None:
    w._publish(w._timed(holders))
    w._judge()


def test_a_holder_without_a_time_ages_from_when_it_was_first_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("relay.horizon.time.time", lambda: now[0])
    w = watch()
    observe(w, [replace(SESSION, age_seconds=5.0), SLOT])
    assert w.holders is not None and w.holders[1].age_seconds == 0
    now[0] += 60
    observe(w, [replace(SESSION, age_seconds=30.0), SLOT])
    # Same xid age: the older by time comes first, the slot now.
    assert [h.kind for h in w.holders] == ["replication_slot", "session"]
    assert w.holders[0].age_seconds == 60
    # A slot holding a new xid starts again.
    now[0] += 10
    observe(w, [replace(SLOT, xid=1001, age_xids=10)])
    assert w.holders[0].age_seconds == 0


def test_the_warning_is_logged_once_per_crossing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.horizon")
    w = watch(warn_after=300)
    for seconds in (100, 400, 500, 600, 10, 20, 350):
        observe(w, [replace(SESSION, age_seconds=float(seconds))])
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "held by" in m]) == 2
    assert len([m for m in messages if "back under" in m]) == 1
    assert "pg_terminate_backend(4242)" in messages[0]
    assert w.warning is not None


def test_health_says_who_but_not_what_they_run() -> None:
    w = watch(warn_after=300)
    observe(w, [SESSION])
    [warning] = w.health_warnings()
    assert warning["pid"] == 4242 and warning["application_name"] == "notebook"
    assert "payroll" not in str(warning) and "analyst" not in str(warning)
    # No figures while the last sample failed: stale ones would mislead.
    w._publish(None)
    assert w.health_warnings() == []
    assert watch(warn_after=0).health_warnings() == []


def test_metrics_have_one_series_per_kind() -> None:
    metrics = Metrics()
    w = HorizonWatch(engine=None, warn_after=300, collector=metrics.horizon)  # type: ignore[arg-type]
    observe(w, [SESSION])
    text = metrics.render().decode()
    samples: dict[str, Any] = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("relay_xmin_horizon")
    }
    assert samples == {
        'relay_xmin_horizon_age_seconds{kind="session"}': 400.0,
        'relay_xmin_horizon_age_seconds{kind="replication_slot"}': 0.0,
        'relay_xmin_horizon_age_seconds{kind="prepared_transaction"}': 0.0,
        'relay_xmin_horizon_age_xids{kind="session"}': 50.0,
        'relay_xmin_horizon_age_xids{kind="replication_slot"}': 0.0,
        'relay_xmin_horizon_age_xids{kind="prepared_transaction"}': 0.0,
    }
