-- A role that can read relay's history views and nothing else.
--
--   psql "$RELAY_DATABASE_URL" -v role=relay_reader -f docs/readonly-role.sql
--   (or: relay psql -- -v role=relay_reader -f docs/readonly-role.sql)
--
-- Then give people or dashboards a login that is a member of it, and run the script
-- again so that the login gets the timeouts below:
--   CREATE ROLE grafana LOGIN PASSWORD '...' IN ROLE relay_reader;
--
-- Timeouts. A reader's query, or a transaction a reader left open, holds a snapshot, and
-- while it does PostgreSQL can remove no dead row younger than it, the outbox's included:
-- relay's queue slows for everyone (docs/operations.md). So in relay's database a reader's
-- statement is cancelled after 60 s, and a session idle in an open transaction ends after
-- 60 s. Choose others with -v statement_timeout=5min -v idle_timeout=30s. PostgreSQL
-- applies a role's settings to the role that logs in, never through the roles it is a
-- member of, so they are set on the group and on each of its direct members that can log
-- in (superusers aside), for this database only; run the script again after adding one.
-- Long analytics belong on a replica (docs/operations.md).
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
\if :{?statement_timeout}
\else
  \set statement_timeout 60s
\endif
\if :{?idle_timeout}
\else
  \set idle_timeout 60s
\endif

SELECT format('CREATE ROLE %I NOLOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec

GRANT USAGE ON SCHEMA relay TO :"role";
GRANT SELECT ON relay.delivery_log, relay.delivery_state, relay.destination_health,
                relay.outbox_backlog TO :"role";

SELECT format('ALTER ROLE %I IN DATABASE %I SET statement_timeout = %L',
              r.rolname, current_database(), :'statement_timeout'),
       format('ALTER ROLE %I IN DATABASE %I SET idle_in_transaction_session_timeout = %L',
              r.rolname, current_database(), :'idle_timeout')
FROM pg_roles r
WHERE r.rolname = :'role'
   OR (r.rolcanlogin AND NOT r.rolsuper AND r.oid IN (
         SELECT m.member FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
         WHERE g.rolname = :'role'))
ORDER BY r.rolname \gexec
