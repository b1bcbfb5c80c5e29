"""How many due rows a claim locks (relay.db.outbox.claim_scan)."""

from __future__ import annotations

from relay.db.outbox import claim_scan


def test_the_scan_locks_only_the_batch_when_no_destination_can_reach_its_cap() -> None:
    # One destination (the bench's case): cap 256, 56 in flight, room for 200 more.
    assert claim_scan(200, 256, [56]) == 200
    assert claim_scan(200, 256, []) == 200
    # Destinations already at their cap are skipped before the scan: they don't count.
    assert claim_scan(10, 32, [32, 40]) == 10


def test_the_scan_leaves_room_when_the_window_may_drop_rows() -> None:
    # A batch larger than the cap: one destination could fill it past its cap.
    assert claim_scan(100, 32, []) == 400
    # A destination with less room than the batch.
    assert claim_scan(200, 256, [100]) == 800
    assert claim_scan(10, 32, [32, 25]) == 40
