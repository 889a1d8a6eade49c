"""How the flow launches a vLLM engine, shared by generation and the local judge.

Inputs: the `engine` section of a pool entry or a judge endpoint; `UF_VLLM_ENV` and
`UF_MODELS_DIR`. Outputs: validated `EngineSettings`, the engine interpreter and model
paths with `{models_dir}` expanded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_engine_python() -> str:
    """The local vLLM environment's interpreter (UF_VLLM_ENV overrides the folder)."""
    env = os.environ.get("UF_VLLM_ENV") or str(REPO_ROOT / ".venv-vllm")
    return str(Path(env) / "bin" / "python")


def models_dir() -> str:
    return os.environ.get("UF_MODELS_DIR") or str(REPO_ROOT / ".models")


def resolve_model(model: str) -> str:
    """Expand `{models_dir}`, `~` and `$VARS`; a relative path that exists becomes absolute.

    Anything else (a served name, a hub id) is returned unchanged.
    """
    text = os.path.expanduser(os.path.expandvars(model.replace("{models_dir}", models_dir())))
    for base in (Path.cwd(), REPO_ROOT):
        candidate = Path(text) if os.path.isabs(text) else base / text
        if candidate.exists():
            return str(candidate.resolve())
    return text


class EngineSettings(BaseModel):
    """How the flow starts a vLLM engine (serve: vllm_server or vllm_batch)."""

    model_config = ConfigDict(extra="forbid")

    python: str | None = Field(None, description="Interpreter of the vLLM environment; default: the local one built "
                                                 "by scripts/setup_local.sh (UF_VLLM_ENV)")
    extra_args: list[str] = Field(default_factory=list, description="More vLLM command-line arguments")
    # The defaults suit the small CPU engine of the demo and the tests; a GPU config gives its
    # own (the card config sets `env: {}`). VLLM_ENABLE_V1_MULTIPROCESSING=0 runs the model in
    # the engine-core process instead of a further worker process: one Python start fewer, which
    # took a CPU server's start from about 40 s to about 22 s here (docs/benchmarks.md).
    # OMP_NUM_THREADS=1: a small model gains nothing from a second thread, and OpenMP threads
    # that spin waiting for each other made an engine 4x slower on cores shared with other work.
    env: dict[str, str] = Field(
        default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                                 "OMP_NUM_THREADS": "1"},
        description="Environment for the engine process (HF_HUB_OFFLINE=1 is always set unless given here); "
                    "the default suits a small CPU engine")
    enforce_eager: bool = Field(True, description="Skip graph compilation (starts in ~30 s instead of minutes on CPU)")
    startup_timeout_s: float = Field(600, gt=0, description="Give up when the server is not healthy by then")
    stop_timeout_s: float = Field(20, gt=0, description="SIGTERM grace before SIGKILL of the engine's process group")
    run_timeout_s: float = Field(6 * 3600, gt=0, description="vllm_batch: longest one batch run may take")
    batch_runner: Literal["offline", "run_batch"] = Field(
        "offline", description="vllm_batch: our LLM.chat runner (offline engine) or vLLM's run_batch entry point")
    log_dir: str | None = Field(None, description="Engine logs; default: <output>/logs when local, else a temp folder")

    def interpreter(self) -> str:
        return self.python or default_engine_python()
