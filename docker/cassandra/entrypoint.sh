#!/usr/bin/env bash
# Entry point of the cassandra service: password authentication and role-based authorization, as in
# stack/conf/cassandra.yaml, then the image's own docker-entrypoint.sh. The image's entry point only
# edits a few settings from CASSANDRA_* variables (addresses, snitch, cluster name), not these.
# Idempotent: each start replaces the authenticator and authorizer entries, whichever form (a plain
# class name or a `class_name:` block) the image's cassandra.yaml uses, by the same two entries.
set -euo pipefail

conf=/etc/cassandra/cassandra.yaml
edited="$(mktemp)"
awk '
  /^(authenticator|authorizer):/ { skipping = 1; next }
  skipping && /^[ \t]+[^ \t]/     { next }
  { skipping = 0; print }
' "$conf" >"$edited"
cat >>"$edited" <<'YAML'
authenticator:
  class_name: org.apache.cassandra.auth.PasswordAuthenticator
authorizer:
  class_name: org.apache.cassandra.auth.CassandraAuthorizer
YAML
# rewrite in place (not mv): keeps the file's owner and works on a bind-mounted file too
cat "$edited" >"$conf"
rm -f "$edited"

exec docker-entrypoint.sh "$@"
