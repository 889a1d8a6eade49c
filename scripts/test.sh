#!/usr/bin/env bash
# The whole test suite, from nothing: project environment with test extras, the linter (ruff,
# configured in pyproject.toml; a lint error stops here), headless Chromium
# (for the tests marked `browser`), the local CPU vLLM engine and model (for the tests marked
# `vllm`), then pytest.
#   bash scripts/test.sh [pytest args]      e.g. -m "not vllm" for the fast part only
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# The suite starts Python many times (servers, workers, CLI runs, engines) in environments
# this script builds: let Python cache the bytecode it compiles there, so the installs can
# skip compiling (scripts/bootstrap.sh) and each module is compiled once, not at every start.
unset PYTHONDONTWRITEBYTECODE
# The engine environment (its own venv, a few minutes from nothing) builds beside the
# project's; its output is shown once it is done.
engine_pid=""
if [[ "${UF_SKIP_ENGINE:-0}" != "1" ]]; then
  engine_log="$(mktemp)"
  bash scripts/setup_local.sh >"$engine_log" 2>&1 &
  engine_pid=$!
  trap 'kill "$engine_pid" 2>/dev/null || true' EXIT
fi
bash scripts/bootstrap.sh test
"${UF_VENV:-$REPO/.venv}/bin/ruff" check .
bash scripts/install_browser.sh
if [[ -n "$engine_pid" ]]; then
  engine_rc=0
  wait "$engine_pid" || engine_rc=$?
  cat "$engine_log"
  if [[ $engine_rc -ne 0 ]]; then echo "scripts/setup_local.sh failed (exit $engine_rc)" >&2; exit 1; fi
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export PREFECT_HOME="${PREFECT_HOME:-$(mktemp -d)}"
set +e
# Tests run on UF_TEST_WORKERS processes (pytest-xdist; default 3: most tests wait on servers,
# so three share two cores well); a module stays on one worker and the vLLM tests share one
# (tests/conftest.py). UF_TEST_WORKERS=0 runs everything in this process.
workers="${UF_TEST_WORKERS:-3}"
dist=()
if [[ "$workers" != "0" ]]; then dist=(-n "$workers"); fi
"${UF_VENV:-$REPO/.venv}/bin/python" -m pytest -ra "${dist[@]}" "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then echo "pytest collected no tests" >&2; exit 1; fi
exit $rc
