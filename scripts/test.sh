#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian machine, then runs the whole suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/services.sh
exec .venv/bin/python -m pytest "$@"
