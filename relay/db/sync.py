"""Bring the database in line with the tenants and destinations of the config file.

Upserts what the file declares (marking it origin='config', the file being its source of
truth); a config destination that left the file is disabled, never deleted, so its
history stays. Several processes may start at once: an advisory lock serialises them.
"""

from __future__ import annotations

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Text

from relay.config import Limits, Settings
from relay.delivery import registry
from relay.signing import generate_secret

# Reasons relay itself writes when the file turns a destination off; only these are
# cleared when the file turns it on again (a health auto-disable is not).
DISABLED_IN_FILE = "disabled in config file"
REMOVED_FROM_FILE = "removed from config file"

LOCK = text("SELECT pg_advisory_xact_lock(hashtext('relay.sync_config'))")

UPSERT_TENANT = text("""
    INSERT INTO relay.tenants (id, metadata, pods, origin, rate_limit_per_second,
                               rate_limit_burst, max_in_flight)
    VALUES (:id, CAST(:metadata AS jsonb), :pods, 'config', :rate_limit_per_second,
            :rate_limit_burst, :max_in_flight)
    ON CONFLICT (id) DO UPDATE
    SET metadata = excluded.metadata, pods = excluded.pods, origin = 'config',
        rate_limit_per_second = excluded.rate_limit_per_second,
        rate_limit_burst = excluded.rate_limit_burst,
        max_in_flight = excluded.max_in_flight,
        deleted_at = NULL, updated_at = now()
    WHERE tenants.metadata IS DISTINCT FROM excluded.metadata
       OR tenants.pods IS DISTINCT FROM excluded.pods
       OR (tenants.rate_limit_per_second, tenants.rate_limit_burst, tenants.max_in_flight)
          IS DISTINCT FROM (excluded.rate_limit_per_second, excluded.rate_limit_burst,
                            excluded.max_in_flight)
       OR tenants.origin <> 'config' OR tenants.deleted_at IS NOT NULL
""").bindparams(bindparam("pods", type_=ARRAY(Text)))

# A tenant that left the file stops answering for its pods (pod publishing fails closed)
# and becomes the API's to manage or delete.
RELEASE_REMOVED_TENANTS = text("""
    UPDATE relay.tenants SET pods = '{}', origin = 'api', updated_at = now()
    WHERE origin = 'config' AND NOT (id = ANY(:declared))
""").bindparams(bindparam("declared", type_=ARRAY(Text)))

UPSERT_DESTINATION = text("""
    INSERT INTO relay.destinations
        (tenant_id, id, type, topics, config, credentials, url, custom_headers, secret,
         signature_mode, timeout_seconds, metadata, origin, disabled_at, disabled_reason,
         rate_limit_per_second, rate_limit_burst, max_in_flight, ordering_key,
         ordering_on_failure)
    VALUES (:tenant_id, :id, :type, :topics, CAST(:config AS jsonb),
            CAST(:credentials AS jsonb), :url, CAST(:custom_headers AS jsonb),
            COALESCE(:secret, :generated_secret), :signature_mode, :timeout_seconds,
            CAST(:metadata AS jsonb), 'config',
            CASE WHEN :enabled THEN NULL ELSE now() END,
            CASE WHEN :enabled THEN NULL ELSE :disabled_in_file END,
            :rate_limit_per_second, :rate_limit_burst, :max_in_flight, :ordering_key,
            :ordering_on_failure)
    ON CONFLICT (tenant_id, id) DO UPDATE
    SET type = excluded.type, topics = excluded.topics, config = excluded.config,
        credentials = excluded.credentials, url = excluded.url,
        custom_headers = excluded.custom_headers,
        -- A webhook without a secret in the file keeps the one generated for it (and
        -- gets one, if it was of another type before).
        secret = CASE WHEN excluded.type <> 'webhook' THEN NULL
                      ELSE COALESCE(:secret, destinations.secret, :generated_secret) END,
        signature_mode = excluded.signature_mode,
        timeout_seconds = excluded.timeout_seconds,
        rate_limit_per_second = excluded.rate_limit_per_second,
        rate_limit_burst = excluded.rate_limit_burst,
        max_in_flight = excluded.max_in_flight,
        ordering_key = excluded.ordering_key,
        ordering_on_failure = excluded.ordering_on_failure,
        metadata = excluded.metadata, origin = 'config', deleted_at = NULL,
        -- The file has no keys for these: what the API once set must not linger where
        -- the API can no longer change it.
        filter = NULL, delivery_metadata = '{}'::jsonb,
        previous_secret = CASE WHEN :secret IS NULL THEN destinations.previous_secret END,
        previous_secret_invalid_at = CASE WHEN :secret IS NULL
                                          THEN destinations.previous_secret_invalid_at END,
        disabled_at = CASE
            WHEN NOT :enabled THEN COALESCE(destinations.disabled_at, now())
            WHEN destinations.disabled_reason IN (:disabled_in_file, :removed_from_file)
                THEN NULL
            ELSE destinations.disabled_at END,
        disabled_reason = CASE
            WHEN NOT :enabled THEN COALESCE(destinations.disabled_reason, :disabled_in_file)
            WHEN destinations.disabled_reason IN (:disabled_in_file, :removed_from_file)
                THEN NULL
            ELSE destinations.disabled_reason END,
        updated_at = now()
""").bindparams(bindparam("topics", type_=ARRAY(Text)))

# Disabled, not deleted, so its history stays; from now on the API may manage it.
DISABLE_REMOVED = text("""
    UPDATE relay.destinations
    SET disabled_at = COALESCE(disabled_at, now()),
        disabled_reason = COALESCE(disabled_reason, :removed_from_file),
        origin = 'api', updated_at = now()
    WHERE origin = 'config' AND deleted_at IS NULL
      AND NOT (tenant_id || '/' || id = ANY(:declared))
""").bindparams(bindparam("declared", type_=ARRAY(Text)))


def _limits(declared: Limits) -> dict[str, float | int | None]:
    return {
        "rate_limit_per_second": declared.rate_limit_per_second,
        "rate_limit_burst": declared.rate_limit_burst,
        "max_in_flight": declared.max_in_flight,
    }


async def sync_config(conn: AsyncConnection, settings: Settings) -> None:
    await conn.execute(LOCK)
    declared: list[str] = []
    for tenant in settings.declared_tenants():
        await conn.execute(
            UPSERT_TENANT,
            {
                "id": tenant.id,
                "metadata": orjson.dumps(tenant.metadata).decode(),
                "pods": tenant.pods,
                **_limits(tenant),
            },
        )
        for dest in tenant.destinations:
            declared.append(f"{tenant.id}/{dest.id}")
            webhook = dest.type == "webhook"
            config, credentials = registry.describer(dest.type).normalise(
                dest.config, dest.credentials
            )
            await conn.execute(
                UPSERT_DESTINATION,
                {
                    "tenant_id": tenant.id,
                    "id": dest.id,
                    "type": dest.type,
                    "topics": dest.topic_list,
                    "config": orjson.dumps(config).decode(),
                    "credentials": orjson.dumps(credentials).decode(),
                    "url": dest.url,
                    "custom_headers": orjson.dumps(dest.custom_headers).decode(),
                    "secret": dest.secret,
                    "generated_secret": generate_secret(
                        dest.webhook_mode or settings.delivery.webhook_mode
                    )
                    if webhook
                    else None,
                    "signature_mode": dest.webhook_mode,
                    "timeout_seconds": dest.timeout_seconds,
                    "metadata": orjson.dumps(dest.metadata).decode(),
                    "enabled": dest.enabled,
                    "disabled_in_file": DISABLED_IN_FILE,
                    "removed_from_file": REMOVED_FROM_FILE,
                    **_limits(dest),
                    "ordering_key": dest.ordering_key,
                    "ordering_on_failure": dest.ordering_on_failure,
                },
            )
    await conn.execute(
        DISABLE_REMOVED, {"declared": declared, "removed_from_file": REMOVED_FROM_FILE}
    )
    await conn.execute(
        RELEASE_REMOVED_TENANTS, {"declared": [t.id for t in settings.declared_tenants()]}
    )
