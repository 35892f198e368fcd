#!/usr/bin/env bash
# cassandra-init, a one-shot: the steps of secure_cassandra in stack/localstack.py, through cqlsh.
#   1. log in as the superuser `cassandra` with CASSANDRA_SUPERUSER_PASSWORD; on the first start that
#      fails, so log in with the image's well-known default and replace it;
#   2. create (or reset) the pipeline's role CASSANDRA_USERNAME / CASSANDRA_PASSWORD, allowed to
#      create its keyspace and nothing else.
# Idempotent: a second run logs in with the replaced password and only re-asserts the role.
set -euo pipefail

host="$CASSANDRA_HOST"
port="$CASSANDRA_PORT"
sq="'"
dq='"'

cql_string() { printf "'%s'" "${1//$sq/$sq$sq}"; }         # a CQL string literal
cql_name() { printf '"%s"' "${1//$dq/$dq$dq}"; }            # a quoted CQL identifier

as_superuser() {  # as_superuser PASSWORD STATEMENT
  cqlsh "$host" "$port" --connect-timeout=10 --request-timeout=20 -u cassandra -p "$1" -e "$2"
}

probe="SELECT release_version FROM system.local"
superuser_password=""
# the native port opens a few seconds before the auth tables are ready: retry for 3 minutes
for _ in $(seq 90); do
  if as_superuser "$CASSANDRA_SUPERUSER_PASSWORD" "$probe" >/dev/null 2>&1; then
    superuser_password="$CASSANDRA_SUPERUSER_PASSWORD"
    break
  fi
  if as_superuser cassandra "$probe" >/dev/null 2>&1; then
    as_superuser cassandra "ALTER ROLE cassandra WITH PASSWORD = $(cql_string "$CASSANDRA_SUPERUSER_PASSWORD")"
    superuser_password="$CASSANDRA_SUPERUSER_PASSWORD"
    echo "cassandra-init: default superuser password replaced by CASSANDRA_SUPERUSER_PASSWORD"
    break
  fi
  sleep 2
done
if [ -z "$superuser_password" ]; then
  echo "cassandra-init: cannot log in to $host:$port as cassandra, neither with CASSANDRA_SUPERUSER_PASSWORD" \
       "nor with the default password (was the superuser password changed outside .env?)" >&2
  exit 1
fi

role="$(cql_name "$CASSANDRA_USERNAME")"
password="$(cql_string "$CASSANDRA_PASSWORD")"
statements="CREATE ROLE IF NOT EXISTS $role WITH LOGIN = true AND PASSWORD = $password;
ALTER ROLE $role WITH PASSWORD = $password AND LOGIN = true;
GRANT CREATE ON ALL KEYSPACES TO $role;"
# a password just replaced may take a couple of seconds to reach the credentials cache
for attempt in $(seq 10); do
  if as_superuser "$superuser_password" "$statements"; then
    echo "cassandra-init: role $CASSANDRA_USERNAME ready (CREATE ON ALL KEYSPACES)"
    exit 0
  fi
  echo "cassandra-init: role setup failed (attempt $attempt), retrying" >&2
  sleep 3
done
echo "cassandra-init: could not create role $CASSANDRA_USERNAME on $host:$port" >&2
exit 1
