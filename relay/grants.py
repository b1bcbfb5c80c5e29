"""Who may publish what in the pod-style API. Pure functions, no I/O.

A publisher is known by its ``x-api-key``; each of its grants names recipients (pod URLs,
or ``*``) and topic patterns (as in relay.routing). It may publish to a recipient on a
topic when one grant covers both. Anything not granted is refused.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from relay.config import GrantConfig, PublisherConfig
from relay.routing import any_topic_matches


def identify(publishers: Sequence[PublisherConfig], presented_key: str) -> PublisherConfig | None:
    """The publisher whose key this is, or None.

    Every key is compared, in constant time, even after a match: neither the key nor its
    position in the list leaks through response timing.
    """
    presented = _exact_bytes(presented_key)
    found = None
    for publisher in publishers:
        key = _exact_bytes(publisher.key or "")
        if hmac.compare_digest(presented, key) and key:
            found = publisher
    return found


def _exact_bytes(text: str) -> bytes:
    # aiohttp keeps a header's undecodable bytes as lone surrogates (and os.environ does
    # the same for a key read from the environment); plain UTF-8 cannot encode them.
    # "surrogatepass" encodes every string, each to different bytes, so such a key is
    # compared like any other instead of failing the request.
    return text.encode("utf-8", "surrogatepass")


def grant_covers(grant: GrantConfig, recipient: str, topic: str) -> bool:
    if grant.recipients != "*" and recipient not in grant.recipients:
        return False
    return any_topic_matches(grant.topic_list, topic)


def may_publish(grants: Iterable[GrantConfig], recipient: str, topic: str) -> bool:
    """Does one of these grants allow publishing ``topic`` to ``recipient``?"""
    return any(grant_covers(grant, recipient, topic) for grant in grants)
