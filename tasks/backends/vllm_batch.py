"""vLLM batch runs over an OpenAI Batch JSONL file, in the separate vLLM environment.

Two runners read the same file and write the same OpenAI Batch output lines:
- "offline" (default): `vllm_offline_runner.py` beside this module, the offline engine
  (`LLM.chat`) over the whole file: vLLM's highest-throughput path;
- "run_batch": `python -m vllm.entrypoints.openai.run_batch`, vLLM's own batch tool.

Inputs: request records, the engine's Python, the model and engine arguments. Outputs:
one result record per request; a log file per run; `generate_s` (engine time spent
generating, model load excluded) after a run of the offline runner.

Each `run` call is one engine process: it loads the model, runs the whole file and exits.
The stage therefore hands it all the shards of a model at once. Neither runner reports
per-request latency, so latency_s is None. A non-zero exit or a missing output line
raises EngineDiedError (the shards are retried).
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from tasks.backends.base import BatchRequest, BatchResult
from tasks.backends.vllm_server import check_engine, engine_args, engine_env, stop_group, tail
from tasks.errors import EngineDiedError

RUNNER = Path(__file__).resolve().parent / "vllm_offline_runner.py"


class VLLMBatchBackend:
    def __init__(self, name: str, python: str, model: str, served_names: list[str], log_dir: str,
                 tensor_parallel_size: int = 1, dtype: str = "auto", max_model_len: int | None = 4096,
                 chat_template: str | None = None, enforce_eager: bool = True, extra_args: Iterable[str] = (),
                 env: dict[str, str] | None = None, run_timeout_s: float = 6 * 3600, stop_timeout_s: float = 20,
                 runner: str = "offline"):
        if runner not in ("offline", "run_batch"):
            raise ValueError(f"engine.batch_runner: unknown runner {runner!r}")
        self.name = name
        self.runner = runner
        self.generate_s: float | None = None
        self.python, self.model = python, model
        self.log_dir = Path(log_dir)
        self.args = engine_args(model, list(served_names), tensor_parallel_size, dtype, max_model_len,
                                chat_template, enforce_eager, extra_args)
        self.env = env or {}
        self.run_timeout_s, self.stop_timeout_s = run_timeout_s, stop_timeout_s
        self.last_run_s: float | None = None

    def __enter__(self) -> "VLLMBatchBackend":
        check_engine(self.python, self.model)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        reqs = list(requests)
        if not reqs:
            return
        with tempfile.TemporaryDirectory(prefix="uf-batch-") as tmp:
            src, dst = Path(tmp) / "requests.jsonl", Path(tmp) / "results.jsonl"
            with open(src, "w", encoding="utf-8") as fh:
                for req in reqs:
                    fh.write(json.dumps(req, ensure_ascii=False) + "\n")
            self._execute(src, dst, Path(tmp) / "timings.json")
            results = _read_results(dst)
        missing = [r["custom_id"] for r in reqs if r["custom_id"] not in results]
        if missing:
            raise EngineDiedError(f"vLLM batch {self.name}: {len(missing)} of {len(reqs)} requests have no output line")
        for req in reqs:
            yield results[req["custom_id"]]

    def _command(self, src: Path, dst: Path, timings: Path) -> list[str]:
        if self.runner == "run_batch":
            return [self.python, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(src), "-o", str(dst), *self.args]
        return [self.python, str(RUNNER), "-i", str(src), "-o", str(dst), "--timings", str(timings), *self.args]

    def _execute(self, src: Path, dst: Path, timings: Path) -> None:
        log_path = self.log_dir / f"vllm-batch-{self.name}-{int(time.time())}.log"
        cmd = self._command(src, dst, timings)
        started = time.monotonic()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=engine_env(self.env), start_new_session=True)
        try:
            code = proc.wait(timeout=self.run_timeout_s)
        except subprocess.TimeoutExpired:
            stop_group(proc, self.stop_timeout_s)
            raise EngineDiedError(f"vLLM batch {self.name} exceeded engine.run_timeout_s={self.run_timeout_s:.0f}; "
                                  f"log {log_path}") from None
        except BaseException:
            stop_group(proc, self.stop_timeout_s)
            raise
        finally:
            self.last_run_s = time.monotonic() - started
        if code != 0:
            raise EngineDiedError(f"vLLM batch {self.name} exited with code {code}; log {log_path}:\n{tail(log_path)}")
        if timings.exists():
            self.generate_s = json.loads(timings.read_text())["generate_s"]


def _read_results(path: Path) -> dict[str, BatchResult]:
    out: dict[str, BatchResult] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        resp = rec.get("response")
        err = rec.get("error")
        result: BatchResult = {"custom_id": rec["custom_id"], "response": None, "error": None, "latency_s": None}
        if resp is not None:
            result["response"] = {"status_code": resp.get("status_code"), "body": resp.get("body")}
        if err:
            result["error"] = {"code": str(err.get("code") or "error"), "message": str(err.get("message") or err)}
        elif resp is not None and resp.get("status_code") != 200:
            result["error"] = {"code": f"http_{resp.get('status_code')}", "message": str(resp.get("body"))[:500]}
        out[rec["custom_id"]] = result
    return out
