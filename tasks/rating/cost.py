"""Token and money accounting of judge (or any chat-completion) requests.

Inputs: the `usage` object of each answer, a price table (USD per 1M input/output tokens by
model, `rating.prices`), or finished shards (RATINGS or COMPLETIONS tables). Outputs: the
cost of one request, and summaries per stage and model that the progress output and the
dataset card print.

Batch mode: rows carry the batch price actually paid (`rating.prices` gives list prices;
the batch price is `batch_*_per_1m` or `batch_discount` x list, default 0.5).
`with_realtime_equivalent` adds what the same tokens cost at the realtime price, so the
progress output, the manifest and the card show both.

A request is counted once: rows of one judge call (one per completion it rated) share a
`request_id` and carry that call's tokens, so summaries count distinct request ids. A model
missing from the price table has a null cost and is reported as unpriced, never as free.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import pyarrow as pa

from tasks.rating.config import Price


def usage_tokens(result: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) reported by an answer, None where absent."""
    resp = result.get("response") or {}
    usage = (resp.get("body") or {}).get("usage") or {}
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


def request_cost(prompt_tokens: int | None, completion_tokens: int | None, price: Price | None) -> float | None:
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * price.input_per_1m + completion_tokens * price.output_per_1m) / 1e6


@dataclass
class CostLine:
    stage: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float | None = 0.0
    unpriced_requests: int = 0

    def add(self, prompt_tokens: int | None, completion_tokens: int | None, usd: float | None) -> None:
        self.requests += 1
        self.prompt_tokens += prompt_tokens or 0
        self.completion_tokens += completion_tokens or 0
        if usd is None:
            self.unpriced_requests += 1
        else:
            self.usd = (self.usd or 0.0) + usd

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.unpriced_requests == self.requests:
            d["usd"] = None  # nothing priced: unknown, not zero
        return d


def summarize(records: Iterable[Mapping[str, Any]], stage: str, model_key: str = "model") -> list[dict]:
    """Per-model totals over request records (model, prompt_tokens, completion_tokens,
    cost_usd, request_id); records sharing a request_id count once."""
    return _summarize(((rec.get(model_key), rec.get("prompt_tokens"), rec.get("completion_tokens"),
                        rec.get("cost_usd"), rec.get("request_id")) for rec in records), stage)


def _summarize(records: Iterable[tuple], stage: str) -> list[dict]:
    """`summarize` over (model, prompt_tokens, completion_tokens, cost_usd, request_id) tuples."""
    lines: dict[str, CostLine] = {}
    seen: set[str] = set()
    for model, prompt, completion, usd, rid in records:
        if rid is not None:
            if rid in seen:
                continue
            seen.add(rid)
        model = model or "?"
        line = lines.get(model)
        if line is None:
            line = lines[model] = CostLine(stage, model)
        line.add(prompt, completion, usd)
    return [lines[m].to_dict() for m in sorted(lines)]


def summarize_table(table: pa.Table, stage: str) -> list[dict]:
    """Summary of a RATINGS (judge_model) or COMPLETIONS (model) table.

    Column by column rather than a dict per row: the rate stage summarizes every ratings
    row of the run (1.3 million at full scale)."""
    model_key = "judge_model" if "judge_model" in table.column_names else "model"
    none = [None] * table.num_rows
    cols = [table.column(c).to_pylist() if c in table.column_names else none
            for c in (model_key, "prompt_tokens", "completion_tokens", "cost_usd", "request_id")]
    return _summarize(zip(*cols), stage)


def merge(*summaries: Iterable[dict]) -> list[dict]:
    """Add summaries of several shards (same stage and model lines are summed)."""
    out: dict[tuple[str, str], dict] = {}
    for summary in summaries:
        for line in summary:
            key = (line["stage"], line["model"])
            if key not in out:
                out[key] = dict(line)
                continue
            acc = out[key]
            for f in ("requests", "prompt_tokens", "completion_tokens", "unpriced_requests"):
                acc[f] += line[f]
            if line["usd"] is not None:
                acc["usd"] = (acc["usd"] or 0.0) + line["usd"]
    return [out[k] for k in sorted(out)]


def with_realtime_equivalent(summary: Iterable[dict], prices: Mapping[str, Price], mode: str) -> list[dict]:
    """Summary lines plus `mode` and `realtime_usd` (the same tokens at the list price)."""
    out = []
    for line in summary:
        price = prices.get(line["model"])
        realtime = request_cost(line["prompt_tokens"], line["completion_tokens"], price)
        out.append({**line, "mode": mode, "realtime_usd": None if line["usd"] is None else realtime})
    return out


def format_summary(summary: Iterable[dict]) -> str:
    """A markdown table for the progress output and the dataset card (batch lines add the
    realtime-equivalent price)."""
    summary = list(summary)
    if any(line.get("mode") == "batch" for line in summary):
        return _format_with_realtime(summary)
    rows = ["| stage | model | requests | input tokens | output tokens | USD |", "|---|---|---:|---:|---:|---:|"]
    total, any_unpriced = 0.0, False
    for line in summary:
        usd = "unpriced" if line["usd"] is None else f"{line['usd']:.4f}"
        if line["unpriced_requests"] and line["usd"] is not None:
            usd += f" (+{line['unpriced_requests']} unpriced)"
        any_unpriced |= bool(line["unpriced_requests"])
        total += line["usd"] or 0.0
        rows.append(f"| {line['stage']} | {line['model']} | {line['requests']:,} | {line['prompt_tokens']:,} "
                    f"| {line['completion_tokens']:,} | {usd} |")
    rows.append(f"\nTotal: {total:.4f} USD" + (" plus unpriced requests" if any_unpriced else ""))
    return "\n".join(rows)


# What `plan` says of batch prices: the default `Price.batch_discount` (OpenAI, Azure and
# Anthropic bill half the list price); a price's own batch fields are what it uses.
BATCH_FACTOR = Price.model_fields["batch_discount"].default


def estimate(stage: str, model: str, requests: int, prompt_tokens: int, completion_tokens: int,
             price: Price | None) -> dict:
    """A planned request volume priced in realtime and batch mode (USD; None when the model
    has no price, which is reported as unpriced, never as free)."""
    usd = request_cost(prompt_tokens, completion_tokens, price)
    batch = None if price is None else request_cost(prompt_tokens, completion_tokens, price.for_mode("batch"))
    return {"stage": stage, "model": model, "requests": requests, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "realtime_usd": usd, "batch_usd": batch}


def _format_with_realtime(summary: list[dict]) -> str:
    rows = ["| stage | model | mode | requests | input tokens | output tokens | USD paid | USD at realtime price |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    paid = realtime = 0.0
    for line in summary:
        usd, rt = line["usd"], line.get("realtime_usd")
        paid += usd or 0.0
        realtime += rt if rt is not None else usd or 0.0
        rows.append(f"| {line['stage']} | {line['model']} | {line.get('mode', 'realtime')} | {line['requests']:,} "
                    f"| {line['prompt_tokens']:,} | {line['completion_tokens']:,} "
                    f"| {'unpriced' if usd is None else f'{usd:.4f}'} | {'unpriced' if rt is None else f'{rt:.4f}'} |")
    saved = f", {1 - paid / realtime:.0%} less" if realtime > 0 else ""
    rows.append(f"\nTotal: {paid:.4f} USD paid; {realtime:.4f} USD at realtime prices{saved}")
    return "\n".join(rows)
