#!/usr/bin/env bash
# Create (once) the project's own virtual environment and install the project into it.
#   bash scripts/bootstrap.sh [extra]     e.g. `test` installs .[test]
# The environment is ${UF_VENV:-<repo>/.venv}; a stamp skips reinstalling unchanged deps.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UF_VENV:-$REPO/.venv}"
EXTRA="${1:-}"
SPEC="$REPO"; [[ -n "$EXTRA" ]] && SPEC="$REPO[$EXTRA]"

pick_python() {
  if [[ -n "${UF_PYTHON:-}" ]]; then echo "$UF_PYTHON"; return; fi
  for cand in python3.11 python3.12 python3.13 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1 \
       && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      command -v "$cand"; return
    fi
  done
  echo "bootstrap: Python 3.10 or newer is required (set UF_PYTHON)" >&2; exit 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[bootstrap] creating $VENV"
  "$(pick_python)" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# pip byte-compiles every file it installs (about 60 s of CPU for this environment, most of it
# modules never imported); without it Python compiles what it imports, once. Where
# PYTHONDONTWRITEBYTECODE is set Python would recompile at every start, so there pip compiles.
COMPILE=(); [[ -z "${PYTHONDONTWRITEBYTECODE:-}" ]] && COMPILE=(--no-compile)
WANT="$(sha256sum "$REPO/pyproject.toml" | cut -c1-16) $EXTRA"
STAMP="$VENV/.uf-installed"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "[bootstrap] installing $SPEC"
  "$VENV/bin/python" -m pip install -q "${COMPILE[@]}" -e "$SPEC"
  echo "$WANT" > "$STAMP"
else
  echo "[bootstrap] $VENV up to date"
fi
