"""Request building and result parsing for the generation stage (pure functions).

Inputs: an INSTRUCTIONS table, the generation config, the run seed and the source ->
principle-row mapping. Outputs: `Planned` completions (one per instruction x k), request
records shaped like OpenAI Batch JSONL lines, and COMPLETIONS rows built from result
records.

Request ids derive from prompt_id, completion_index and model, so a retried shard sends
the same ids and its results replace, never duplicate, the earlier ones.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

from tasks.backends.base import BatchRequest, BatchResult, make_request
from tasks.generation.config import GenerationConfig, ModelEntry
from tasks.generation.draws import draw_for_instruction
from tasks.generation.principles import table_row


@dataclass(frozen=True)
class Planned:
    prompt_id: str
    instruction: str
    completion_index: int
    model: str
    principle: str
    system_prompt: str

    @property
    def request_id(self) -> str:
        return request_id(self.prompt_id, self.completion_index, self.model)


def request_id(prompt_id: str, completion_index: int, model: str) -> str:
    return f"gen-{prompt_id}-{completion_index}-{model}"


def request_seed(rid: str) -> int:
    """A per-request sampling seed (fits a signed 32-bit int, as some servers require)."""
    return int.from_bytes(hashlib.sha256(rid.encode()).digest()[:4], "big") & 0x7FFFFFFF


def plan_shard(instructions: pa.Table, cfg: GenerationConfig, seed: int,
               rows_by_source: dict[str, str] | None = None) -> list[Planned]:
    """Every completion an instruction shard needs, ordered by prompt_id then index."""
    pool = [m.name for m in cfg.models]
    rows_by_source = rows_by_source or {}
    cols = instructions.select(["prompt_id", "instruction", "source", "source_format"]).to_pylist()
    planned: list[Planned] = []
    for rec in sorted(cols, key=lambda r: r["prompt_id"]):
        row = rows_by_source.get(rec["source"]) or table_row(rec["source_format"])
        for d in draw_for_instruction(seed, rec["prompt_id"], row, pool, cfg.k, cfg.allow_repeats, cfg.principles,
                                      policy=cfg.policy):
            planned.append(Planned(rec["prompt_id"], rec["instruction"], d.completion_index, d.model,
                                   d.principle, d.system_prompt))
    return planned


def build_request(p: Planned, entry: ModelEntry) -> BatchRequest:
    s = entry.sampling
    body: dict = {
        "model": entry.request_model,
        "messages": [
            {"role": "system", "content": p.system_prompt},
            {"role": "user", "content": p.instruction},
        ],
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
    }
    if s.stop:
        body["stop"] = list(s.stop)
    body.update(s.extra)
    if s.seeded:
        body["seed"] = request_seed(p.request_id)
    return make_request(p.request_id, body)


def _error_text(result: BatchResult) -> str | None:
    err = result.get("error")
    if err:
        return f"{err.get('code', 'error')}: {err.get('message', '')}".strip()
    resp = result.get("response")
    if resp is None:
        return "no_response: the backend returned neither a response nor an error"
    if resp.get("status_code") != 200:
        return f"http_{resp.get('status_code')}: {str(resp.get('body'))[:500]}"
    return None


def completion_row(p: Planned, result: BatchResult | None, backend: str) -> dict:
    """One COMPLETIONS row. A failed or empty answer has response None and error set."""
    row = {
        "prompt_id": p.prompt_id, "completion_index": p.completion_index, "model": p.model,
        "principle": p.principle, "system_prompt": p.system_prompt, "response": None,
        "finish_reason": None, "prompt_tokens": None, "completion_tokens": None,
        "latency_s": None, "backend": backend, "request_id": p.request_id, "error": None,
    }
    if result is None:
        row["error"] = "missing: no result came back for this request"
        return row
    latency = result.get("latency_s")
    row["latency_s"] = float(latency) if latency is not None else None
    error = _error_text(result)
    if error:
        row["error"] = error
        return row
    body = result["response"]["body"]
    choice = (body.get("choices") or [{}])[0]
    usage = body.get("usage") or {}
    row["finish_reason"] = choice.get("finish_reason")
    row["prompt_tokens"] = usage.get("prompt_tokens")
    row["completion_tokens"] = usage.get("completion_tokens")
    text = (choice.get("message") or {}).get("content")
    if text is None or not text.strip():
        # An empty answer is not a response the judge should rate.
        row["error"] = f"empty_response: finish_reason={row['finish_reason']}"
    else:
        row["response"] = text
    return row


def is_failed(row: dict) -> bool:
    return row["response"] is None
