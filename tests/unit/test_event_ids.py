"""Generated ids: version 7 UUIDs in hex (``evt_`` first for events), never repeated,
and ordered by the millisecond they were made in (index locality)."""

from __future__ import annotations

import time
import uuid

from relay.publish import new_event_id, time_ordered_hex


def test_generated_event_ids_are_version_7_uuids() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        assert event_id.startswith("evt_") and len(event_id) == 36
        parsed = uuid.UUID(hex=event_id[4:])
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert parsed.hex == event_id[4:]


def test_ids_carry_the_millisecond_they_were_made_in() -> None:
    before = time.time_ns() // 1_000_000
    made = time_ordered_hex()
    after = time.time_ns() // 1_000_000
    assert before <= int(made[:12], 16) <= after


def test_ids_made_in_a_later_millisecond_sort_after() -> None:
    earlier = [time_ordered_hex() for _ in range(20)]
    time.sleep(0.002)
    later = [time_ordered_hex() for _ in range(20)]
    assert max(earlier) < min(later)
