"""Reading EXPLAIN (FORMAT JSON) output: tests that pin a statement's plan."""

from __future__ import annotations

from typing import Any


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The node and every node under it, depth first."""
    return [node, *(n for child in node.get("Plans", []) for n in plan_nodes(child))]
