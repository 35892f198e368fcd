-- Roles, databases and schemas of the local stack, run by `make up` as the postgres superuser
-- through psql with -v variables from .env. Idempotent: every run converges to this state and
-- resets the passwords to those in .env.
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN', :'pipeline_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'pipeline_user') \gexec
SELECT format('CREATE ROLE %I LOGIN REPLICATION', :'debezium_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'debezium_user') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'grafana_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'grafana_user') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'airflow_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'airflow_user') \gexec

-- least privilege: only Debezium replicates; nobody but postgres is a superuser
ALTER ROLE :"pipeline_user" LOGIN NOSUPERUSER NOCREATEROLE NOREPLICATION PASSWORD :'pipeline_password';
ALTER ROLE :"debezium_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE REPLICATION PASSWORD :'debezium_password';
ALTER ROLE :"grafana_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'grafana_password';
ALTER ROLE :"airflow_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'airflow_password';

SELECT format('CREATE DATABASE %I OWNER %I', :'pipeline_db', :'pipeline_user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'pipeline_db') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'airflow_db', :'airflow_user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'airflow_db') \gexec

-- the Airflow database is Airflow's alone
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;
GRANT ALL ON DATABASE :"airflow_db" TO :"airflow_user";

\connect :"pipeline_db"

REVOKE ALL ON DATABASE :"pipeline_db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"pipeline_db" TO :"pipeline_user";
GRANT CONNECT ON DATABASE :"pipeline_db" TO :"debezium_user", :"grafana_user";
-- nobody creates objects in public; the pipeline owns its two schemas
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS binance AUTHORIZATION :"pipeline_user";
CREATE SCHEMA IF NOT EXISTS cassandra AUTHORIZATION :"pipeline_user";
CREATE SCHEMA IF NOT EXISTS pipeline_health AUTHORIZATION :"pipeline_user";
GRANT CREATE ON DATABASE :"pipeline_db" TO :"pipeline_user";

-- Debezium: read the source schema, nothing else
GRANT USAGE ON SCHEMA binance TO :"debezium_user";
GRANT SELECT ON ALL TABLES IN SCHEMA binance TO :"debezium_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"pipeline_user" IN SCHEMA binance GRANT SELECT ON TABLES TO :"debezium_user";
REVOKE ALL ON SCHEMA cassandra FROM :"debezium_user";

-- Grafana: read the bridge schema and the health measurements, nothing else
GRANT USAGE ON SCHEMA cassandra, pipeline_health TO :"grafana_user";
GRANT SELECT ON ALL TABLES IN SCHEMA cassandra, pipeline_health TO :"grafana_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"pipeline_user" IN SCHEMA cassandra GRANT SELECT ON TABLES TO :"grafana_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"pipeline_user" IN SCHEMA pipeline_health GRANT SELECT ON TABLES TO :"grafana_user";
REVOKE ALL ON SCHEMA pipeline_health FROM :"debezium_user";
REVOKE ALL ON SCHEMA binance FROM :"grafana_user";
ALTER ROLE :"grafana_user" SET default_transaction_read_only = on;
