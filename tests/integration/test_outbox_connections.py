"""The dispatcher's statements behave the same on a plain asyncpg connection (what the
dispatcher uses: prepared, no pool) as on a SQLAlchemy connection (tools, docs)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from relay.claiming import Claims, Take
from relay.db import outbox
from relay.db.engine import asyncpg_url, create_engine
from relay.delivery import webhook
from tests.support.plans import plan_nodes


async def seed(db: Any, pending: int, *, one_per_ms: bool = False) -> None:
    """``pending`` deliveries to acme/orders; with ``one_per_ms``, due a millisecond
    apart, as if published by separate transactions (one transaction gives all of its
    rows the same next_attempt_at)."""
    await db.execute("INSERT INTO relay.tenants (id) VALUES ('acme')")
    await db.execute(
        """INSERT INTO relay.destinations (tenant_id, id, topics, url, secret, custom_headers)
           VALUES ('acme', 'orders', '{*}', 'http://127.0.0.1:9/hook', 'whsec_x',
                   '{"x-team": "a"}')"""
    )
    await db.execute(
        f"""WITH e AS (
                INSERT INTO relay.events (tenant_id, id, topic, data, metadata)
                SELECT 'acme', 'evt-' || g, 'order.created', '{{"n": 1}}', '{{"k": "v"}}'
                FROM generate_series(1, {pending}) g RETURNING seq)
            INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id, next_attempt_at)
            SELECT seq, 'acme', 'orders',
                   now() - CASE WHEN {one_per_ms} THEN {pending} - n ELSE 0 END
                           * interval '1 millisecond'
            FROM (SELECT seq, row_number() OVER (ORDER BY seq) AS n FROM e) AS e"""
    )


def recorded(claimed: outbox.Claimed, success: bool, status: int) -> outbox.Recorded:
    return outbox.Recorded(
        claimed=claimed,
        attempt_status="success" if success else "failed",
        http_status=status,
        error_code=None,
        error_detail=None,
        response_body="ok",
        response_headers={"content-type": "text/plain"},
        duration_ms=3,
        started_at=datetime.now(UTC),
        next_status="delivered" if success else "pending",
        delay_seconds=0.0 if success else 30.0,
        # What the webhook type says of a 410 (relay/delivery/webhook.py).
        disable_reason=webhook.GONE if status == 410 else None,
    )


async def test_claim_and_record_on_a_raw_connection_match_sqlalchemy(
    db: Any, database_url: str
) -> None:
    await seed(db, pending=4)
    token = uuid.uuid4()
    raw = await asyncpg.connect(asyncpg_url(database_url))
    engine = create_engine(database_url, pool_size=1)
    try:
        # Two claims on each kind of connection, with a per-destination cap counted.
        from_raw = await outbox.claim_due(
            raw, limit=10, lease_seconds=30, token=token, per_destination=3, in_flight={}
        )
        assert len(from_raw) == 3
        async with engine.begin() as conn:
            from_sqlalchemy = await outbox.claim_due(
                conn,
                limit=10,
                lease_seconds=30,
                token=token,
                per_destination=3,
                in_flight={("acme", "orders"): 2},
            )
        assert len(from_sqlalchemy) == 1
        # Same row shape either way (ids, event ids and claim times aside).
        shape = {
            k: v
            for k, v in dataclasses.asdict(from_raw[0]).items()
            if k not in ("id", "event_seq", "event_id", "claimed_at")
        }
        other = {
            k: v
            for k, v in dataclasses.asdict(from_sqlalchemy[0]).items()
            if k not in ("id", "event_seq", "event_id", "claimed_at")
        }
        assert shape == other
        assert shape["custom_headers"] == '{"x-team": "a"}' and shape["attempt"] == 1

        # Record on the raw connection, inside its transaction, as the dispatcher does.
        batch = [recorded(c, True, 200) for c in from_raw[:2]]
        batch.append(recorded(from_raw[2], False, 500))
        async with raw.transaction():
            disabled = await outbox.record_outcomes(raw, batch, auto_disable_after=0)
        assert disabled == []
    finally:
        await raw.close()
        await engine.dispose()

    statuses = dict(await db.fetch("SELECT id, status FROM relay.deliveries"))
    assert sorted(statuses.values()) == ["delivered", "delivered", "delivering", "pending"]
    # One row per outcome (the order of ids within one batch is the planner's).
    attempts = await db.fetch(
        "SELECT status, response_headers FROM relay.attempts ORDER BY status DESC, id"
    )
    assert [a["status"] for a in attempts] == ["success", "success", "failed"]
    assert attempts[0]["response_headers"] == '{"content-type": "text/plain"}'
    failures = await db.fetchval("SELECT consecutive_failures FROM relay.destinations")
    assert failures == 1


async def test_raw_record_reports_a_410_disable(db: Any, database_url: str) -> None:
    await seed(db, pending=1)
    raw = await asyncpg.connect(asyncpg_url(database_url))
    try:
        [claimed] = await outbox.claim_due(raw, limit=5, lease_seconds=30, token=uuid.uuid4())
        async with raw.transaction():
            disabled = await outbox.record_outcomes(raw, [recorded(claimed, False, 410)])
    finally:
        await raw.close()
    assert [(d.tenant_id, d.destination_id) for d in disabled] == [("acme", "orders")]
    assert await db.fetchval("SELECT disabled_at IS NOT NULL FROM relay.destinations")


def claim_sql(plan: list[Take]) -> tuple[str, list[Any]]:
    """CLAIM as the dispatcher sends it: its SQL and its values, in order."""
    claim = outbox._compiled(outbox.CLAIM)
    params = outbox.claim_parameters(plan, lease_seconds=30, token=uuid.uuid4())
    return claim.sql, [params[name] for name in claim.names]


def deliveries_scans(plan: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [
        (node["Node Type"], node.get("Index Name"))
        for node in plan_nodes(plan["Plan"])
        if node.get("Relation Name") in ("deliveries", "deliveries_active")
    ]


async def test_each_destination_is_read_in_order_from_the_due_index(db: Any) -> None:
    # Whatever the statistics say (none for a table of a few destinations, which
    # autovacuum never analyzes), each destination's rows come from one ordered range of
    # ix_deliveries_due, stopped at its count: never a scan of the backlog, or a sort of
    # it (a second per claim at a million pending).
    await seed(db, pending=20_000)
    await db.execute("ANALYZE relay.deliveries")
    since = (datetime.now(UTC) - timedelta(hours=1), 1_000)
    for plan in ([Take(("acme", "orders"), 200, None)], [Take(("acme", "orders"), 32, since)]):
        sql, values = claim_sql(plan)
        # With the values (a prepared statement's first runs), then the generic plan.
        [with_values] = orjson.loads(await db.fetchval("EXPLAIN (FORMAT JSON) " + sql, *values))
        await db.execute(f"PREPARE claim AS {sql}")
        await db.execute("SET plan_cache_mode = force_generic_plan")
        nulls = ", ".join("NULL" for _ in values)
        [generic] = orjson.loads(await db.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE claim({nulls})"))
        await db.execute("DEALLOCATE claim")
        await db.execute("RESET plan_cache_mode")
        for explained in (with_values, generic):
            scans = deliveries_scans(explained)
            assert ("Index Scan", "ix_deliveries_due") in scans, scans
            # The cursor bounds the index range itself: rows behind it are never read.
            [due] = [
                node
                for node in plan_nodes(explained["Plan"])
                if node.get("Index Name") == "ix_deliveries_due"
            ]
            assert "ROW(next_attempt_at, id) > ROW(" in due["Index Cond"], due
            assert not any(kind == "Seq Scan" for kind, _ in scans), scans
            locked_from = [
                child["Node Type"]
                for node in plan_nodes(explained["Plan"])
                if node.get("Node Type") == "LockRows"
                for child in node["Plans"]
            ]
            assert locked_from == ["Index Scan"], locked_from


async def buffers_to_claim(db: Any, plan: list[Take]) -> tuple[int, int]:
    """(rows claimed, shared buffers its reads of ix_deliveries_due and the rows it
    points at cost) of one claim, measured and rolled back."""
    sql, values = claim_sql(plan)
    transaction = db.transaction()
    await transaction.start()
    try:
        [explained] = orjson.loads(
            await db.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *values)
        )
    finally:
        await transaction.rollback()
    scans = [
        node
        for node in plan_nodes(explained["Plan"])
        if node.get("Index Name") == "ix_deliveries_due"
    ]
    read = sum(n["Shared Hit Blocks"] + n["Shared Read Blocks"] for n in scans)
    return explained["Plan"]["Actual Rows"], read


async def test_a_claim_does_not_walk_what_was_delivered_while_a_snapshot_was_held(
    db: Any, database_url: str
) -> None:
    # Any session holding a snapshot (an idle REPEATABLE READ transaction here; an
    # analytics query, a backup) keeps every row version delivered since it began, and
    # their entries in the due index. A claim from the destination's cursor reads past
    # none of them; one from the head reads all of them.
    await seed(db, pending=8_000, one_per_ms=True)
    reader = await asyncpg.connect(asyncpg_url(database_url))
    try:
        await reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await reader.fetchval("SELECT count(*) FROM relay.deliveries")
        claims = Claims(per_destination=10_000)
        claims.found(await outbox.find_due(db, {}))
        token = uuid.uuid4()
        for _ in range(30):  # 6,000 delivered while the snapshot is held
            plan = claims.plan({}, 200)
            batch = await outbox.claim(db, plan, lease_seconds=30, token=token)
            claims.took(plan, [(c.destination, c.position) for c in batch])
            async with db.transaction():
                await outbox.record_outcomes(db, [recorded(c, True, 200) for c in batch])
        assert (
            await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'pending'")
            == 2_000
        )

        rows, from_cursor = await buffers_to_claim(db, claims.plan({}, 200))
        assert rows == 200
        rows, from_head = await buffers_to_claim(db, [Take(("acme", "orders"), 200, None)])
        assert rows == 200
    finally:
        await reader.close()
    # 200 entries and their rows: a few index pages and a few heap pages. From the head,
    # 6,000 more, dead to everyone but the reader.
    assert from_cursor < 40, (from_cursor, from_head)
    assert from_head > 5 * from_cursor, (from_cursor, from_head)


# RECORD_OUTCOMES' parameters, by name, as PREPARE spells their types.
OUTCOME_TYPES = {
    "delivery_id": "bigint[]",
    "token": "uuid[]",
    "event_seq": "bigint[]",
    "tenant_id": "text[]",
    "destination_id": "text[]",
    "number": "int[]",
    "attempt_status": "text[]",
    "http_status": "int[]",
    "error_code": "text[]",
    "error_detail": "text[]",
    "response_body": "text[]",
    "response_headers": "text[]",
    "duration_ms": "int[]",
    "started_at": "timestamptz[]",
    "next_status": "text[]",
    "delay_seconds": "float8[]",
    "manual": "boolean[]",
    "trace_id": "text[]",
    "written_since": "timestamptz",
}


async def test_recording_finds_each_delivery_by_its_key_however_many_are_in_flight(
    db: Any,
) -> None:
    # Statistics read while nothing was in flight, then 1,000 of 20,000 rows held by
    # dispatchers. A prepared statement runs a generic plan from its sixth run on; in it
    # the update must find each delivery by its primary key, not scan every row in
    # flight and, for each, the whole batch of outcomes.
    await seed(db, pending=20_000)
    await db.execute("ANALYZE relay.deliveries")
    await outbox.claim_due(db, limit=1_000, lease_seconds=300, token=uuid.uuid4())
    record = outbox._compiled(outbox.RECORD_OUTCOMES)
    types = ", ".join(OUTCOME_TYPES[name] for name in record.names)
    await db.execute(f"PREPARE record_outcomes ({types}) AS {record.sql}")
    await db.execute("SET plan_cache_mode = force_generic_plan")
    nulls = ", ".join("NULL" for _ in record.names)  # a generic plan ignores the values
    [plan] = orjson.loads(
        await db.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE record_outcomes({nulls})")
    )
    # The retries are updated, the ends deleted (to be inserted into finished history).
    writes = [
        node
        for node in plan_nodes(plan["Plan"])
        if node.get("Operation") in ("Update", "Delete")
        and node.get("Relation Name") == "deliveries_active"
    ]
    assert len(writes) == 2
    for write in writes:
        scans = [
            (node["Node Type"], node.get("Index Name"))
            for node in plan_nodes(write)[1:]
            if node.get("Relation Name") in ("deliveries", "deliveries_active")
        ]
        assert scans == [("Index Scan", "pk_deliveries_active")], scans
        # Driven by the locked rows, each found once: joined to the batch of outcomes
        # (a CTE the plan takes for 10 rows), every row written scanned the whole batch.
        ctes = [n.get("CTE Name") for n in plan_nodes(write) if n["Node Type"] == "CTE Scan"]
        assert ctes == ["held"], ctes
    # The check for attempts already written is a probe per outcome, never a hash of
    # every attempt written in the window.
    assert attempt_scans_outside_subplans(plan["Plan"]) == []


def attempt_scans_outside_subplans(node: dict[str, Any], in_subplan: bool = False) -> list[str]:
    """Reads of relay.attempts (the insert aside) not under a SubPlan: run once per plan."""
    in_subplan = in_subplan or node.get("Parent Relationship") == "SubPlan"
    reads = node.get("Relation Name", "").startswith("attempts") and node["Node Type"] != (
        "ModifyTable"
    )
    found = [f"{node['Node Type']} on {node['Relation Name']}"] if reads and not in_subplan else []
    for child in node.get("Plans", []):
        found += attempt_scans_outside_subplans(child, in_subplan)
    return found


async def test_recorded_retries_are_announced_with_their_time(db: Any, database_url: str) -> None:
    # A retry whose delay is shorter than the recorder's transaction could land behind a
    # dispatcher's cursor; its NOTIFY names the destination and when it is due.
    await seed(db, pending=2)
    heard: list[str] = []
    listener = await asyncpg.connect(asyncpg_url(database_url))
    try:
        await listener.add_listener(outbox.NOTIFY_CHANNEL, lambda *args: heard.append(args[3]))
        claimed = await outbox.claim_due(db, limit=2, lease_seconds=30, token=uuid.uuid4())
        async with db.transaction():
            await outbox.record_outcomes(
                db, [recorded(claimed[0], True, 200), recorded(claimed[1], False, 500)]
            )
        due = await db.fetchval(
            "SELECT next_attempt_at FROM relay.deliveries WHERE status = 'pending'"
        )
        async with asyncio.timeout(5):
            while not heard:
                await asyncio.sleep(0.01)
    finally:
        await listener.close()
    assert [outbox.announced(payload) for payload in heard] == [(("acme", "orders"), due)]


async def test_the_claim_reads_the_due_index_before_the_table_was_ever_analyzed(
    db: Any, database_url: str
) -> None:
    # A new deployment's first minute, before autoanalyze comes round: no statistics,
    # 100,000 pending for one destination. Planned without them, the claim read every row
    # of the destination through another index and sorted them (44 ms a claim). In the
    # dispatcher's claim session it reads ix_deliveries_due in order.
    await seed(db, pending=100_000)
    claimer = await asyncpg.connect(asyncpg_url(database_url), server_settings=outbox.CLAIM_SESSION)
    try:
        plan = [Take(("acme", "orders"), 5, None)]
        sql, values = claim_sql(plan)
        [explained] = orjson.loads(await claimer.fetchval("EXPLAIN (FORMAT JSON) " + sql, *values))
        rows, read = await buffers_to_claim(claimer, plan)
    finally:
        await claimer.close()
    assert "Sort" not in {n["Node Type"] for n in plan_nodes(explained["Plan"])}
    assert ("Index Scan", "ix_deliveries_due") in deliveries_scans(explained)
    assert rows == 5
    assert read < 40, read  # not the 100,000 rows of the destination
