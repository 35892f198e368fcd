#!/usr/bin/env bash
# airflow-init, a one-shot: migrate the metadata database, then create the pools, as the local
# stack's prepare_airflow does. The pools are defined once, in stack/localstack.py (AIRFLOW_POOLS).
set -euo pipefail

airflow db migrate
python - <<'PY'
import subprocess

from stack.localstack import AIRFLOW_POOLS

for name, slots, description in AIRFLOW_POOLS:
    subprocess.run(["airflow", "pools", "set", name, str(slots), description], check=True)
PY
