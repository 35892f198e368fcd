#!/usr/bin/env bash
# airflow-api-server: write the simple auth manager's password file from the admin login in .env
# (AIRFLOW_ADMIN_USER / AIRFLOW_ADMIN_PASSWORD), as the local stack's prepare_airflow does, then serve.
# Written at every start, so a password changed in .env applies after `docker compose up -d`.
set -euo pipefail

umask 077
python - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
with open(path, "w") as f:
    json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
PY
exec airflow api-server "$@"
