#!/usr/bin/env bash
# Debian packages the local stack needs, installed only if missing: Java 17, Maven, PostgreSQL 15+.
set -euo pipefail

missing=()
java -version 2>&1 | grep -q 'version "17' || [ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ] \
  || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql postgresql-contrib)
command -v runuser >/dev/null || missing+=(util-linux)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: Java 17, Maven, PostgreSQL present"
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian starts its own cluster on 5432 after install; the stack runs its own under .run/
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters -h | while read -r ver name port status _; do
    if [ "$status" = online ] && [ "$port" = "5432" ]; then
      echo "stopping Debian's default cluster $ver/$name on port 5432 (the stack runs its own)"
      $sudo pg_ctlcluster "$ver" "$name" stop || true
      $sudo sed -i 's/^auto/manual/' "/etc/postgresql/$ver/$name/start.conf" || true
    fi
  done
fi
