"""Dispatcher groups: tenants delivered by dispatchers of their own. Pure, no I/O.

Why. Within one dispatcher process no tenant's backlog is claimed ahead of another's
fresh event (relay/claiming.py), but every delivery of the process shares its event
loop: while it turns over a big tenant's backlog at thousands a second, each step of a
small tenant's delivery (the notification, its claim, its request) waits a loop turn of
a few milliseconds (bench/ANALYSIS.md, issue 23). Tenants that must not feel another's
burst are named in a group (``[delivery.groups]``) and delivered by processes started
with ``relay dispatch --group NAME``, whose loops nothing else fills.

Who delivers what:
- a dispatcher of group G claims the destinations of G's tenants, and nothing else;
- a dispatcher of no group claims the destinations of tenants in no group, and, so that
  a group with no dispatcher running never stalls its tenants' events, a grouped
  tenant's destination whose first due row has waited ``takeover_seconds``
  (``delivery.group_takeover_seconds``) as its periodic search finds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DispatchGroup:
    """The group a dispatcher serves (``name``; None: no group) among all ``groups``
    (name -> tenant ids) of the configuration."""

    name: str | None = None
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    takeover_seconds: float = 30.0

    @classmethod
    def of(
        cls, name: str | None, groups: Mapping[str, list[str]], takeover_seconds: float
    ) -> DispatchGroup:
        return cls(name, {g: frozenset(t) for g, t in groups.items()}, takeover_seconds)

    def group_of(self, tenant: str) -> str | None:
        for name, tenants in self.groups.items():
            if tenant in tenants:
                return name
        return None

    def serves(self, tenant: str) -> bool:
        """Whether this dispatcher claims ``tenant``'s rows as they are announced."""
        return self.group_of(tenant) == self.name

    def takes(self, tenant: str, waited_seconds: float) -> bool:
        """Whether this dispatcher claims ``tenant``'s destination whose first due row
        has been due ``waited_seconds``: its own, or (a dispatcher of no group) another
        group's left waiting ``takeover_seconds``."""
        return self.serves(tenant) or (
            self.name is None and waited_seconds >= self.takeover_seconds
        )

    def describe(self) -> str:
        """For the start-up log line."""
        if self.name is not None:
            return f"group {self.name}: tenants {', '.join(sorted(self.groups[self.name]))}"
        if not self.groups:
            return "all tenants"
        return (
            f"tenants in no group (groups {', '.join(sorted(self.groups))} after "
            f"{self.takeover_seconds:g} s without their own dispatcher)"
        )
