-- The schema owner for `docker compose`: `migrate` and `keys init` run as this login, which is
-- not a superuser (a superuser bypasses every grant and row level security, and can rewrite the
-- audit log unseen). It may create the group roles (CREATEROLE: on PostgreSQL 15 and earlier a
-- wide right, which can grant itself predefined roles such as pg_read_server_files; keep this
-- login for migrations and key jobs only) and objects in this database, and
-- owns what the reference image created (`user_logins`, schema public). What needs a superuser
-- is done here, once: pgcrypto, which PostgreSQL 10 needs for the audit chain's SHA-256 (and 10 to
-- 12 for the random subject key).
-- Idempotent. The password comes from a psql variable set by the compose file.
-- Quietly: the result would print the password in the container's log.
\o /dev/null
SELECT set_config('etl.owner_password', :'owner_password', false);
\o
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'etl_owner') THEN
        EXECUTE format('CREATE ROLE etl_owner LOGIN CREATEROLE PASSWORD %L',
                       current_setting('etl.owner_password'));
    END IF;
    EXECUTE format('GRANT CREATE ON DATABASE %I TO etl_owner', current_database());
END
$$;
ALTER ROLE etl_owner SET idle_in_transaction_session_timeout = '1min';
CREATE EXTENSION IF NOT EXISTS pgcrypto;
ALTER SCHEMA public OWNER TO etl_owner;
ALTER TABLE IF EXISTS public.user_logins OWNER TO etl_owner;
