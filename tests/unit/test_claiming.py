"""What a claim asks for (relay.claiming): shares, caps, cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay.claiming import (
    TENANT_MEMORY,
    Claims,
    ask_again_in,
    share_by_tenant,
    share_out,
    tenant_rooms,
)

A, B, C = ("t", "a"), ("t", "b"), ("t", "c")
T0 = datetime(2026, 12, 7, tzinfo=UTC)


def test_the_batch_is_shared_equally_and_unused_room_goes_to_the_others() -> None:
    assert share_out([(A, 100), (B, 100)], 10) == [(A, 5), (B, 5)]
    assert share_out([(A, 2), (B, 100), (C, 100)], 10) == [(A, 2), (B, 4), (C, 4)]
    assert share_out([(A, 3), (B, 3)], 10) == [(A, 3), (B, 3)]
    # More destinations than rows: the first ones in the order given get one each.
    assert share_out([(A, 5), (B, 5), (C, 5)], 2) == [(A, 1), (B, 1)]
    assert share_out([(A, 0)], 10) == []
    assert share_out([], 10) == []


def test_destinations_at_their_cap_are_not_asked_and_the_first_turn_rotates() -> None:
    claims = Claims(per_destination=4, active={A, B, C})
    plan = claims.plan({A: 4, B: 1}, 2)
    assert sum(t.count for t in plan) == 2
    assert A not in {t.destination for t in plan}
    # Over successive claims of one row, every destination with room gets a turn.
    served = {claims.plan({A: 4}, 1)[0].destination for _ in range(4)}
    assert served == {B, C}
    assert claims.plan({A: 4, B: 4, C: 4}, 10) == []


def test_cursors_follow_the_last_row_taken_and_a_short_answer_ends_activity() -> None:
    claims = Claims(per_destination=10, active={A, B})
    plan = claims.plan({}, 10)
    # Positions are (next_attempt_at, id): the rows of one transaction share their time.
    claims.took(plan, [(A, (T0, 7)), (A, (T0 + timedelta(seconds=1), 3)), (A, (T0, 9))])
    assert claims.cursors == {A: (T0 + timedelta(seconds=1), 3)}
    # A gave fewer rows than asked: nothing more due there now; B gave none.
    assert claims.active == set()
    assert claims.plan({}, 10) == []


def test_an_announcement_moves_the_cursor_back_to_rows_that_committed_late() -> None:
    claims = Claims(per_destination=10, cursors={A: (T0, 40)})
    claims.announce(A, T0 - timedelta(milliseconds=5))
    assert claims.cursors[A] == (T0 - timedelta(milliseconds=5), 0)
    claims.announce(A, T0 + timedelta(seconds=1))  # ahead of the cursor: it stays
    assert claims.cursors[A] == (T0 - timedelta(milliseconds=5), 0)
    claims.announce(B)
    assert claims.active == {A, B} and B not in claims.cursors
    [take_a, take_b] = sorted(claims.plan({}, 2), key=lambda t: t.destination)
    assert (take_a.since, take_b.since) == ((T0 - timedelta(milliseconds=5), 0), None)


def test_the_search_keeps_an_existing_cursor_and_the_sweep_forgets_them_all() -> None:
    claims = Claims(per_destination=10, cursors={A: (T0, 5)})
    claims.found([(A, (T0 + timedelta(seconds=3), 8)), (B, (T0 + timedelta(seconds=1), 2))])
    assert claims.cursors == {A: (T0, 5), B: (T0 + timedelta(seconds=1), 2)}
    assert claims.active == {A, B}
    claims.forget_cursors()
    assert claims.cursors == {} and claims.active == {A, B}


def test_rows_announced_while_a_claim_runs_are_not_jumped_over_by_its_answer() -> None:
    # The claim's snapshot was taken before a transaction with earlier rows committed;
    # its NOTIFY arrived while the claim ran. The claim's answer (later positions) must
    # not move the cursor past those rows: nothing would read them until the sweep.
    claims = Claims(per_destination=10, active={A}, cursors={A: (T0, 1)})
    plan = claims.plan({}, 5)
    reading = claims.begin()
    claims.announce(A, T0 + timedelta(seconds=1))  # ahead of the cursor when it came
    claims.took(plan, [(A, (T0 + timedelta(seconds=2), 50))] * 5, reading)
    assert claims.cursors[A] == (T0 + timedelta(seconds=1), 0)
    # The same for a search, and for a wake-up that names no destination.
    claims = Claims(per_destination=10)
    reading = claims.begin()
    claims.announce(B, T0)
    claims.found([(B, (T0 + timedelta(seconds=3), 9))], reading)
    assert claims.cursors[B] == (T0, 0)
    reading = claims.begin()
    claims.forget_cursors()
    claims.took([], [(B, (T0 + timedelta(seconds=4), 10))], reading)
    assert claims.cursors == {}
    # Announcements before the statement began were applied then; they are not kept.
    claims = Claims(per_destination=10, active={A}, cursors={A: (T0, 1)})
    claims.announce(A, T0 + timedelta(seconds=1))
    reading = claims.begin()
    claims.took(claims.plan({}, 1), [(A, (T0 + timedelta(seconds=2), 50))], reading)
    assert claims.cursors[A] == (T0 + timedelta(seconds=2), 50)


def test_a_destination_announced_while_its_claim_runs_stays_active() -> None:
    # A row committed after the claim's snapshot: the claim gives fewer rows than asked,
    # which would say "nothing more due"; the announcement says there is. Left out of
    # ``active``, the row would wait for the next announcement or search (a poll interval).
    claims = Claims(per_destination=10, active={A, B})
    plan = claims.plan({}, 10)
    reading = claims.begin()
    claims.announce(A, T0)
    claims.took(plan, [(A, (T0 - timedelta(seconds=1), 1))], reading)
    assert claims.active == {A}
    assert [t.destination for t in claims.plan({}, 10)] == [A]


def test_two_statements_at_once_each_see_the_announcements_made_while_they_ran() -> None:
    claims = Claims(per_destination=10, active={A, B}, cursors={A: (T0, 1), B: (T0, 1)})
    first = claims.begin()
    plan_a = claims.plan({}, 10, among={A})
    claims.announce(A, T0 + timedelta(seconds=1))
    second = claims.begin()
    plan_b = claims.plan({}, 10, skip={A})
    assert [t.destination for t in plan_a] == [A] and [t.destination for t in plan_b] == [B]
    claims.announce(B, T0 + timedelta(seconds=2))
    claims.took(plan_b, [(B, (T0 + timedelta(seconds=3), 9))], second)
    # The second statement began after A's announcement: it is the first one's to settle.
    assert claims.cursors[B] == (T0 + timedelta(seconds=2), 0)
    claims.took(plan_a, [(A, (T0 + timedelta(seconds=5), 7))], first)
    assert claims.cursors[A] == (T0 + timedelta(seconds=1), 0)
    assert claims.active == {A, B}
    # A statement that failed leaves nothing behind.
    failed = claims.begin()
    claims.end(failed)
    claims.announce(A, T0)
    assert failed.late == {}


def test_a_tenant_holding_its_share_leaves_the_last_eighth_of_the_slots_to_others() -> None:
    # Alone, a tenant may take every free slot.
    assert tenant_rooms({"a": 200}, {"a"}, 256) == {"a": 56}
    # With another tenant about, one past its equal share stops 32 short of full.
    assert tenant_rooms({"a": 200}, {"a", "b"}, 256) == {"a": 24, "b": 56}
    assert tenant_rooms({"a": 224}, {"a", "b"}, 256) == {"a": 0, "b": 32}
    # Two backlogs: neither can take the slots kept for a third tenant.
    assert tenant_rooms({"a": 112, "b": 112}, {"a", "b", "c"}, 256) == {
        "a": 0,
        "b": 0,
        "c": 32,
    }
    # Up to its share, a tenant may use them.
    assert tenant_rooms({"a": 100, "b": 30}, {"a", "b"}, 256) == {"a": 94, "b": 98}


def test_a_tenant_filling_the_slots_leaves_room_for_another_in_the_plan() -> None:
    # Tenant "big" has 16 destinations with backlogs and would fill all 64 slots; "small"
    # was seen with due work a moment ago.
    big = {("big", f"d{n}") for n in range(16)}
    claims = Claims(per_destination=8, active=set(big), concurrency=64)
    claims.seen["small"] = 0.0
    plan = claims.plan({}, 64, now=1.0)
    assert sum(t.count for t in plan) == 64 - 8
    held = {t.destination: t.count for t in plan}
    # The small tenant's fresh row finds room at the next claim though big's backlog
    # still waits: 8 slots were kept.
    small = ("small", "x")
    claims.announce(small)
    plan = claims.plan(held, 64 - sum(held.values()), now=2.0)
    assert [(t.destination, t.count) for t in plan] == [(small, 8)]
    # Forgotten after TENANT_MEMORY without due work: alone again, big may fill all.
    claims = Claims(per_destination=8, active=set(big), concurrency=64)
    claims.seen["small"] = 0.0
    assert sum(t.count for t in claims.plan({}, 64, now=TENANT_MEMORY + 1)) == 64


def test_the_batch_is_shared_between_tenants_first_then_their_destinations() -> None:
    # Tenant t has three destinations with a backlog, tenant u one fresh row: u gets its
    # row at once, and t's share is split among its destinations.
    u = ("u", "x")
    rooms = [(A, 100), (B, 100), (C, 100), (u, 1)]
    assert dict(share_by_tenant(rooms, 10)) == {A: 3, B: 3, C: 3, u: 1}
    # Per destination alone, t would take 3 shares of 4 whatever u needed.
    assert dict(share_by_tenant([(A, 100), (B, 100), (u, 100)], 10)) == {A: 3, B: 2, u: 5}
    # Fewer rows than tenants: the turn says who goes first.
    assert share_by_tenant([(A, 5), (u, 5)], 1, turn=0) == [(A, 1)]
    assert share_by_tenant([(A, 5), (u, 5)], 1, turn=1) == [(u, 1)]


def test_a_tenant_with_many_destinations_cannot_crowd_out_another() -> None:
    many = [(("big", f"d{n}"), 32) for n in range(50)]
    small = ("small", "d")
    claims = Claims(per_destination=32, active={d for d, _ in many} | {small})
    for _ in range(10):
        plan = {t.destination: t.count for t in claims.plan({}, 20)}
        assert plan[small] == 10
        assert sum(plan.values()) == 20


def test_a_rate_limited_destination_is_asked_again_when_a_claims_worth_has_refilled() -> None:
    poll = 1.0
    # 20 ms of the rate: 10 tokens at 500/s; one token at 50/s and slower.
    assert ask_again_in(500, 500, poll) == pytest.approx(0.02)
    assert ask_again_in(50, 50, poll) == pytest.approx(0.02)
    assert ask_again_in(10, 10, poll) == pytest.approx(0.1)
    # A burst smaller than 20 ms of the rate: no later than the bucket is full again,
    # but never sooner than 5 ms.
    assert ask_again_in(1000, 5, poll) == pytest.approx(0.005)
    assert ask_again_in(1000, 1, poll) == pytest.approx(0.005)
    # A slow rate waits no longer than the poll interval; no rate (a cap held by every
    # process, which frees slots no wake-up announces): a quarter of it.
    assert ask_again_in(0.1, 1, poll) == poll
    assert ask_again_in(None, None, poll) == poll / 4
