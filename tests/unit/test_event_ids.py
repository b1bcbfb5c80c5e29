"""Generated event ids: ``evt_`` and a version 4 UUID in hex, never repeated."""

from __future__ import annotations

import uuid

from relay.publish import new_event_id


def test_generated_ids_are_version_4_uuids() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        assert event_id.startswith("evt_") and len(event_id) == 36
        parsed = uuid.UUID(hex=event_id[4:])
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert parsed.hex == event_id[4:]
