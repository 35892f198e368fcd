#!/usr/bin/env bash
# Entry point of the postgres service: the image's own docker-entrypoint.sh, after one change.
# The image refuses to initialise a cluster without a superuser password (or with `trust`). As in
# the local stack, the superuser here only logs in over the container's own socket (peer; pg_hba.conf
# rejects it over TCP), so its password is random, generated on the first start and never used.
set -euo pipefail

if [ ! -s /var/lib/postgresql/data/PG_VERSION ]; then
  superuser_password="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export POSTGRES_PASSWORD="$superuser_password"
fi

exec docker-entrypoint.sh "$@"
