-- Login roles for `docker compose`: each service connects as a member of one group role, never as
-- the superuser (a superuser bypasses row level security and every grant). Idempotent: a role
-- that exists gets the password given now. The passwords come from psql variables set by the
-- compose file.
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name)
            THEN format('ALTER ROLE %I LOGIN PASSWORD %L', r.name, r.password)
            ELSE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE %I', r.name, r.password, r.grp)
       END
FROM (VALUES ('etl_ingest_login', :'ingest_password', 'etl_ingest'),
             ('etl_recoverer_login', :'recoverer_password', 'etl_recoverer'),
             ('etl_analyst_login', :'analyst_password', 'etl_analyst'),
             ('etl_opener_login', :'opener_password', 'etl_opener'))
     AS r(name, password, grp)
\gexec

-- A transaction a login leaves idle ends after a minute, releasing the audit chain or the vault
-- epoch it may hold (SECURITY.md, "Who can do what").
SELECT format('ALTER ROLE %I SET idle_in_transaction_session_timeout = %L', name, '1min')
FROM unnest(ARRAY['etl_ingest_login', 'etl_recoverer_login', 'etl_analyst_login',
                  'etl_opener_login']) AS name
\gexec
