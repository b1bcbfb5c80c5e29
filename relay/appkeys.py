"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.config import Settings
from relay.db.operator_events import Subscriptions
from relay.metrics import Metrics

if TYPE_CHECKING:
    from relay.dispatcher import Dispatcher
    from relay.groupcommit import GroupCommit
    from relay.horizon import HorizonWatch

SETTINGS = web.AppKey("settings", Settings)
DATABASE_URL = web.AppKey("database_url", str)
ENGINE = web.AppKey("engine", AsyncEngine)
DISPATCHER: web.AppKey[Dispatcher | None] = web.AppKey("dispatcher")
HEAD_REVISION = web.AppKey("head_revision", str)
METRICS = web.AppKey("metrics", Metrics)
PUBLISHER: web.AppKey[GroupCommit] = web.AppKey("publisher")
HORIZON: web.AppKey[HorizonWatch] = web.AppKey("horizon")
# The operator sinks' topics, cached (relay/db/operator_events.py).
OPERATOR_TOPICS = web.AppKey("operator_topics", Subscriptions)
