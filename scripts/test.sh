#!/usr/bin/env bash
# Start the local services (scripts/services.sh up), run pytest against them with .services/env in the
# environment, and ALWAYS stop the services afterwards. Exits with pytest's status.
#
#   scripts/test.sh [pytest args...]        (`make test` calls this with PYTEST_ARGS, default -m "not slow")
#
# PYTHON: the interpreter that runs pytest and the Kafka readiness check (default .venv/bin/python).
# SM_SKIP_BROWSER_TESTS=1: do not install chromium; the HTML report test skips (ignored under CI=true).
#
# It first prints what it is going to install (only what is missing), then installs it: promtool/amtool
# into ~/.cache/stream-monitor/bin, chromium system-wide (apt-get), the Kafka jars into
# ~/.cache/stream-monitor (mvn), redis-server system-wide (apt-get). docs/development.md lists them.
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

case "${SM_SKIP_BROWSER_TESTS:-}" in
  "" | 0 | 1) ;;
  *)
    echo "[test] ERROR: SM_SKIP_BROWSER_TESTS must be 1 (skip the browser test) or 0/unset, not '$SM_SKIP_BROWSER_TESTS'" >&2
    exit 2
    ;;
esac

# The plan: what the steps below will install, before they do (each script knows what it lacks).
# Their lines read "install: WHAT, WHERE, HOW BIG" or "note: ...".
plan="$(scripts/install_promtool.sh --plan && scripts/install_chromium.sh --plan && scripts/services.sh plan)"
if grep -q '^install: ' <<<"$plan"; then
  echo "[test] this run first installs what is missing (later runs reuse it):" >&2
  sed -n 's/^install: /[test]   - /p' <<<"$plan" >&2
else
  echo "[test] nothing to install" >&2
fi
sed -n 's/^note: /[test] note: /p' <<<"$plan" >&2
echo "[test] then: start Kafka and Redis on 127.0.0.1 (scripts/services.sh), run pytest ${*:-}, stop them" >&2

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
