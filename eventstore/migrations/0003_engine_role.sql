-- The role the engine runs as once migrations are done (`SET ROLE`, or the
-- connection option `-c role=commerce_engine`): it may read and append events but
-- not update, delete or truncate them, nor switch the append-only triggers off
-- (only the tables' owner can), while the role that runs migrations owns the
-- schema. Every other table, including those later migrations create, is the
-- engine's to read and write.
--
-- Roles are cluster-wide, so the role may exist already (another database of the
-- same server, or one a DBA made); two databases migrating at once may race to
-- create it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'commerce_engine') THEN
        BEGIN
            CREATE ROLE commerce_engine NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    -- The owner must be able to SET ROLE to it (a superuser always can).
    IF NOT pg_has_role(current_user, 'commerce_engine', 'MEMBER') THEN
        EXECUTE format('GRANT commerce_engine TO %I', current_user);
    END IF;
END
$$;

-- Every schema of the database the owner holds (public, and others' such as the read
-- models', when this runs on a database that has them already).
DO $$
DECLARE
    schema_name text;
BEGIN
    FOR schema_name IN
        SELECT nspname FROM pg_namespace
        WHERE nspname = 'public' OR nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
    LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO commerce_engine', schema_name);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO commerce_engine', schema_name);
        EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO commerce_engine', schema_name);
    END LOOP;
END
$$;
-- Tables, sequences and schemas the owner creates later (other components'
-- migrations run after this one).
ALTER DEFAULT PRIVILEGES GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO commerce_engine;
ALTER DEFAULT PRIVILEGES GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO commerce_engine;
ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO commerce_engine;

-- The log: read and append only. The triggers of 0002 refuse UPDATE, DELETE and
-- TRUNCATE for everyone; without the privileges the engine is refused even before
-- them.
REVOKE ALL ON events FROM commerce_engine;
GRANT SELECT, INSERT ON events TO commerce_engine;
-- The engine reads which migrations ran; it never records one.
REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM commerce_engine;
