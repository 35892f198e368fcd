#!/usr/bin/env bash
# Roles, databases and schemas: the local stack's own stack/postgres/bootstrap.sql (mounted, not
# copied), run with the same psql variables stack/localstack.py passes, from this container's
# environment (docker-compose.yaml fills it from .env). The pipeline owner's settings arrive as
# PIPELINE_* because the image reads POSTGRES_USER / POSTGRES_DB for its own superuser and database.
#
# The image runs this once, on an empty data directory. bootstrap.sql is idempotent and resets the
# passwords, so after changing one in .env: `docker compose up -d postgres`, then
#   docker compose exec -u postgres postgres bash /docker-entrypoint-initdb.d/10-bootstrap.sh

# No `set -u` here: the image sources (rather than runs) an init script that lost its executable
# bit, and the option would leak into its entry point. Missing settings are checked instead.
for name in PIPELINE_USER PIPELINE_PASSWORD PIPELINE_DB DEBEZIUM_DB_USER DEBEZIUM_DB_PASSWORD \
            GRAFANA_DB_USER GRAFANA_DB_PASSWORD AIRFLOW_DB_USER AIRFLOW_DB_PASSWORD AIRFLOW_DB; do
  if [ -z "${!name:-}" ]; then
    echo "postgres bootstrap: $name is empty; docker-compose.yaml sets it from .env" >&2
    exit 1
  fi
done

psql -X -q -v ON_ERROR_STOP=1 --username postgres --dbname postgres \
  -v pipeline_user="$PIPELINE_USER" -v pipeline_password="$PIPELINE_PASSWORD" \
  -v pipeline_db="$PIPELINE_DB" \
  -v debezium_user="$DEBEZIUM_DB_USER" -v debezium_password="$DEBEZIUM_DB_PASSWORD" \
  -v grafana_user="$GRAFANA_DB_USER" -v grafana_password="$GRAFANA_DB_PASSWORD" \
  -v airflow_user="$AIRFLOW_DB_USER" -v airflow_password="$AIRFLOW_DB_PASSWORD" \
  -v airflow_db="$AIRFLOW_DB" \
  -f /opt/binance-cdc/bootstrap.sql
