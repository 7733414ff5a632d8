-- Login roles for `docker compose`: each service connects as a member of one group role, never as
-- the superuser (a superuser bypasses row level security and every grant). Idempotent; the
-- passwords come from psql variables set by the compose file.
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE %I', r.name, r.password, r.grp)
FROM (VALUES ('etl_ingest_login', :'ingest_password', 'etl_ingest'),
             ('etl_recoverer_login', :'recoverer_password', 'etl_recoverer'),
             ('etl_analyst_login', :'analyst_password', 'etl_analyst'))
     AS r(name, password, grp)
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name)
\gexec
