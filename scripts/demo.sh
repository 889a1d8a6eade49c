#!/usr/bin/env bash
# The main job on the embedded default: sets up everything it needs (once), then runs all
# four stages of the demo config on the local CPU vLLM engine with the embedded Prefect API.
#   bash scripts/demo.sh [ultrafeedback run options, e.g. --out runs/mine --set seed=7]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/bootstrap.sh
bash scripts/setup_local.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
exec "${UF_VENV:-$REPO/.venv}/bin/ultrafeedback" run --config configs/demo.yaml "$@"
