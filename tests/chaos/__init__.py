"""relay's chaos suite (issue 18): relay's CLI processes, with their default settings,
under load while processes are killed, PostgreSQL is stopped or crashed, destinations
fail or hang, and clients send poison or trickle their requests.

The fast scenarios run with the rest of the tests (``pytest``, or only these:
``.venv/bin/pytest -q -p no:cacheprovider tests/chaos``). The long versions (more events,
longer disruptions, relay's default lease and retry schedule throughout) run with::

    .venv/bin/python -m tests.chaos --long

in under 15 minutes, and write their figures to tests/chaos/RESULTS.md.

harness.py (PostgreSQL, relay processes, receivers, producers), invariants.py (what must
hold after every scenario), scenarios.py (the scenarios), poison.py (the poison inputs).
"""
