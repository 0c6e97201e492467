#!/usr/bin/env bash
# Start the local services (scripts/services.sh up), run pytest against them with .services/env in the
# environment, and ALWAYS stop the services afterwards. Exits with pytest's status.
#
#   scripts/test.sh [pytest args...]        (`make test` calls this with PYTEST_ARGS, default -m "not slow")
#
# PYTHON: the interpreter that runs pytest and the Kafka readiness check (default .venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || command -v "$PY" >/dev/null 2>&1 || {
  echo "[test] ERROR: $PY not found; run 'make venv' (or set PYTHON)" >&2
  exit 1
}
export PYTHON="$PY"

# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
  scripts/services.sh down || echo "[test] WARNING: 'scripts/services.sh down' failed; check 'scripts/services.sh status'" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# promtool/amtool for the alerting-rule tests (extracted from Debian's packages; no daemon is started).
scripts/install_promtool.sh
# Headless chromium for the diagnose HTML report test (Debian's package; nothing is started).
scripts/install_chromium.sh
scripts/services.sh up
# shellcheck source=/dev/null
. .services/env

status=0
# --durations: the slowest tests in every run's log, to keep the default tier short (docs/development.md).
"$PY" -m pytest --durations=40 "$@" || status=$?
exit "$status"
