#!/usr/bin/env bash
# Starts the local services the tests talk to, when they are installed but not running.
# PostgreSQL: the store and gateway tests run against it, and the security tests show a
# sandbox cannot reach it on the host's 127.0.0.1.
set -euo pipefail
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if ! pg_ctlcluster "$version" main status >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
fi
