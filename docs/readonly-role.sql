-- A role that can read relay's history views and nothing else.
--
--   psql "$RELAY_DATABASE_URL" -v role=relay_reader -f docs/readonly-role.sql
--   (or: relay psql -- -v role=relay_reader -f docs/readonly-role.sql)
--
-- Then give people or dashboards a login that is a member of it:
--   CREATE ROLE grafana LOGIN PASSWORD '...' IN ROLE relay_reader;
--
-- The views (docs/sql.md) run with their owner's rights, so the role needs no access to
-- the tables behind them: it cannot read secrets, payloads or anything else, and it
-- cannot write. One thing it does see: destination_health.url, the destinations' URLs.
-- If yours carry credentials (a token in the query string), leave destination_health out
-- of the GRANT below. Run it again after upgrades that add views: it is idempotent.

\set ON_ERROR_STOP on
\if :{?role}
\else
  \set role relay_reader
\endif

SELECT format('CREATE ROLE %I NOLOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec

GRANT USAGE ON SCHEMA relay TO :"role";
GRANT SELECT ON relay.delivery_log, relay.delivery_state, relay.destination_health,
                relay.outbox_backlog TO :"role";
