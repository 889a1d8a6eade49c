"""`ultrafeedback plan`: what a run will do and cost, before it starts paying.

Inputs: a run config file and `--set` overrides. Outputs: a `Plan` (as a dict for
`--json`, or text): per stage the instructions per source, completions per model, judge
calls per aspect, engine starts and GPU slots, and the cost of every paid endpoint in
realtime and batch mode (tasks.rating.cost.estimate, the config's price table).

Everything that can be checked without the source files is checked as `run` checks it
(the same pydantic models; errors name the field); files that are not there yet are
listed, not fatal. Nothing is read from the sources, so the full-size config plans in
about a second. Counts are exact where the config fixes them (an integer quota, k) and
expected values elsewhere: a source whose count depends on its files (quota 'all',
FLAN's per-task part) counts its `expected_rows`; each model gets k/|pool| of the
completions (draws are uniform). Tokens are estimates (`TokenEstimates`), the judge's
prompt overhead is measured on the real prompt templates.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import ValidationError, model_validator

from flows.config import ConfigError, RunConfig, _format_error, read_config
from tasks.generation.engines import VLLM_MODES, engine_groups
from tasks.generation.principles import system_prompts
from tasks.generation.schedule_pool import plan_for_pool
from tasks.rating import prompts
from tasks.rating.cost import BATCH_FACTOR, estimate
from tasks.rating.protocol import CRITIQUE, TYPED_ASPECTS

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text


@dataclass(frozen=True)
class TokenEstimates:
    """Token counts a plan assumes (not measured at plan time).

    Instruction lengths: mean characters / 4 of the bundled real samples (data/sources:
    evol_instruct 293, flan 146, sharegpt 350, truthful_qa 59, ultrachat 68 characters);
    false_qa is taken as TruthfulQA-like. FLAN's reference (shown to the truthfulness
    aspect) averages 139 characters there. A completion is taken as 256 tokens (the real
    UltraFeedback answers in H4's two published rows average 840 characters, ~210 tokens;
    the cap is 1,024). Judge answers: ~60 tokens per text for a plain aspect, ~110 for a
    typed one, ~200 for a critique.
    """

    instruction: dict = field(default_factory=lambda: {
        "evol_instruct": 73, "flan": 37, "sharegpt": 88, "truthful_qa": 15, "ultrachat": 17, "false_qa": 15})
    instruction_default: int = 80
    reference: int = 35
    completion: int = 256
    judge_per_text: int = 60
    judge_per_text_typed: int = 110
    critique_answer: int = 200


class PlanConfig(RunConfig):
    """The run config without the check that source files exist (the plan lists them)."""

    @model_validator(mode="after")
    def _paths_exist(self) -> "PlanConfig":  # same name: replaces RunConfig's check
        return self


def load_plan_config(path: str, overrides: list[str] | None = None) -> PlanConfig:
    file = Path(path)
    raw = read_config(file, overrides)
    try:
        return PlanConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{file}: {_format_error(exc)}") from None


def _tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def source_counts(cfg: RunConfig) -> tuple[dict[str, int | None], list[str]]:
    """Instructions per source; None where the count needs the files and no expected_rows."""
    counts, notes = {}, []
    for i, src in enumerate(cfg.sources):
        if src.expected_rows is not None:
            counts[src.name] = src.expected_rows
        elif isinstance(src.quota, int) and not src.per_task:
            counts[src.name] = src.quota
        else:
            counts[src.name] = None
            notes.append(f"sources.{i} ({src.name}): its count depends on the files (quota 'all' or per_task); "
                         "set expected_rows to plan it")
    return counts, notes


def missing_files(cfg: RunConfig) -> list[str]:
    out = []
    for i, src in enumerate(cfg.sources):
        for path in src.all_paths():
            if "://" not in path and not Path(path).exists():
                out.append(f"sources.{i} ({src.name}): {path}")
    return out


def _template_problems(cfg: RunConfig) -> list[str]:
    from tasks.generation.config import resolve_model

    return [f"generation.models.{i}.chat_template: file not found: {m.chat_template}"
            for i, m in enumerate(cfg.generation.models)
            if m.chat_template and not Path(resolve_model(m.chat_template)).exists()]


def _mean_system_prompt_tokens() -> int:
    pools = [p for pool in system_prompts().values() for p in pool]
    return round(sum(_tokens(p) for p in pools) / max(len(pools), 1))


def judge_overhead(aspect: str, k: int, mode: str) -> int:
    """Tokens of an aspect (or critique) request without instruction and answers: the
    real system prompt, rubric, fences and format instructions."""
    if aspect == CRITIQUE:
        user = prompts.critique_user_message("", "", "", mode)
    else:
        user = prompts.aspect_user_message(aspect, "", [""] * k, mode,
                                           "" if aspect == "truthfulness" else None)
    return sum(_tokens(m["content"]) for m in prompts.messages(user)) + 4 * 2  # chat framing per message


@dataclass
class Plan:
    config: str
    instructions: dict[str, int | None]
    total_instructions: int
    completions: dict[str, float]
    total_completions: int
    engines: list[dict]
    gpu_slots: str | None
    judge: dict
    judge_calls: dict[str, int]
    total_judge_calls: int
    costs: list[dict]
    total_usd: dict
    missing_files: list[str]
    errors: list[str]
    notes: list[str]
    tokens: dict
    schedule: object = None

    def as_dict(self) -> dict:
        return asdict(self)


def _instruction_tokens(cfg: RunConfig, counts: dict, est: TokenEstimates) -> tuple[int, int]:
    """(instruction tokens summed over the run, FLAN-reference tokens summed)."""
    total = ref = 0
    for src in cfg.sources:
        n = counts.get(src.name) or 0
        total += n * est.instruction.get(src.format, est.instruction_default)
        ref += n * est.reference if src.format == "flan" else 0
    return total, ref


def _generation_costs(cfg: RunConfig, completions: dict, counts: dict, est: TokenEstimates) -> list[dict]:
    n = sum(v or 0 for v in counts.values())
    per_instruction = _instruction_tokens(cfg, counts, est)[0] / n if n else 0
    system = _mean_system_prompt_tokens()
    out = []
    for m in cfg.generation.models:
        if m.serve != "openai":
            continue
        req = round(completions[m.name])
        out.append(estimate("generate", m.name, req, round(req * (per_instruction + system + 8)),
                            req * est.completion, cfg.rating.price(m.model)))
    return out


def _judge_costs(cfg: RunConfig, counts: dict, calls: dict, est: TokenEstimates) -> list[dict]:
    ep = cfg.rating.endpoint
    if ep.kind in ("local_vllm", "scripted"):
        return []
    k, mode = cfg.generation.k, ep.answer_mode
    n = sum(v or 0 for v in counts.values())
    ins_tokens, ref_tokens = _instruction_tokens(cfg, counts, est)
    price = cfg.rating.price(ep.request_model)
    lines = []
    for aspect, req in calls.items():
        if aspect == CRITIQUE:
            prompt = req * (judge_overhead(CRITIQUE, 1, mode) + _mean_system_prompt_tokens() + est.completion) \
                + ins_tokens * k
            lines.append(estimate("rate", f"{ep.request_model} ({aspect})", req, round(prompt),
                                  req * est.critique_answer, price))
            continue
        per_text = est.judge_per_text_typed if aspect in TYPED_ASPECTS else est.judge_per_text
        prompt = n * (judge_overhead(aspect, k, mode) + k * est.completion) + ins_tokens
        prompt += ref_tokens if aspect == "truthfulness" else 0
        lines.append(estimate("rate", f"{ep.request_model} ({aspect})", req, round(prompt), req * k * per_text, price))
    return lines


def _unset_keys(cfg: RunConfig) -> list[str]:
    """API-key variables a run will read that are not set here (a note: plan may run elsewhere)."""
    import os

    wanted = [(f"generation.models.{i}", m.api_key_env) for i, m in enumerate(cfg.generation.models)
              if m.serve == "openai" and m.api_key_env]
    ep = cfg.rating.endpoint
    if ep.key_env:
        wanted.append((f"rating.endpoints ({ep.name})", ep.key_env))
    missing = sorted({env for _, env in wanted if not os.environ.get(env)})
    return [f"environment variable {env} is not set here; the run needs it" for env in missing]


def _schedule(cfg: RunConfig, n_instructions: int) -> str:
    """The GPU planner's schedule of the launched engines, as the generation stage will run it."""
    plan = plan_for_pool(cfg.generation, engine_groups(cfg.generation), n_instructions)
    mode = cfg.generation.schedule.mode
    how = ("servers join and leave as their GPUs free up (generation.schedule.mode)" if mode == "elastic"
           else "one server per engine, every replica started with it (generation.schedule.mode)")
    return f"{plan.render()}\nmode: {mode}: {how}"


def make_plan(cfg: RunConfig, origin: str = "", est: TokenEstimates | None = None) -> Plan:
    est = est or TokenEstimates()
    counts, notes = source_counts(cfg)
    n = sum(v or 0 for v in counts.values())
    gen = cfg.generation
    per_model = n * gen.k / len(gen.models)
    completions = {m.name: per_model for m in gen.models}
    engines = [{"engine": g.engine_id, "models": g.names, "serve": g.serve, "starts": 1,
                "gpu_slots": g.entries[0].tensor_parallel_size, "completions": round(per_model * len(g.entries))}
               for g in engine_groups(gen) if g.serve in VLLM_MODES]
    ep = cfg.rating.endpoint
    if ep.launches_engine:
        engines.append({"engine": f"judge:{ep.name}", "models": [ep.model], "serve": "local_vllm", "starts": 1,
                        "gpu_slots": 1, "completions": 0})
    calls = {a: n for a in cfg.rating.aspects}
    if cfg.rating.critique:
        calls[CRITIQUE] = n * gen.k
    costs = _generation_costs(cfg, completions, counts, est) + _judge_costs(cfg, counts, calls, est)
    unpriced = sorted({c["model"] for c in costs if c["realtime_usd"] is None})
    if unpriced:
        notes.append(f"no price for {unpriced} in rating.prices: their cost is unknown, not zero")
    notes.append("judge calls exclude re-asks of unreadable answers (rating.reasks); those add to the cost")
    notes += _unset_keys(cfg)
    total = {"realtime_usd": sum(c["realtime_usd"] or 0 for c in costs),
             "batch_usd": sum(c["batch_usd"] or 0 for c in costs), "batch_factor": BATCH_FACTOR}
    return Plan(origin, counts, n, completions, round(n * gen.k), engines, gen.gpu_slots,
                {"endpoint": ep.name, "kind": ep.kind, "model": ep.request_model, "answer_mode": ep.answer_mode},
                calls, sum(calls.values()), costs, total, missing_files(cfg), _template_problems(cfg), notes,
                asdict(est), _schedule(cfg, n))


def _usd(value: float | None) -> str:
    return "unpriced" if value is None else f"${value:,.2f}"


def format_plan(plan: Plan) -> str:
    """The plan as text, stage by stage."""
    lines = [f"Plan for {plan.config}", "", f"sample: {plan.total_instructions:,} instructions"]
    lines += [f"  {name:24s} {'unknown' if n is None else f'{n:,}'}" for name, n in plan.instructions.items()]
    lines += ["", f"generate: {plan.total_completions:,} completions ({len(plan.completions)} models, expected per model)"]
    lines += [f"  {name:24s} {n:,.0f}" for name, n in plan.completions.items()]
    slots = f"gated by the global concurrency limit {plan.gpu_slots!r}" if plan.gpu_slots else "one after another"
    lines += [f"  engine starts: {sum(e['starts'] for e in plan.engines)}, GPU slots per engine "
              f"{[e['gpu_slots'] for e in plan.engines]} (largest {max([e['gpu_slots'] for e in plan.engines] or [0])}), "
              f"{slots}"]
    j = plan.judge
    lines += ["", f"rate: {plan.total_judge_calls:,} judge calls to {j['model']} ({j['kind']}, {j['answer_mode']} mode)"]
    lines += [f"  {aspect:24s} {n:,}" for aspect, n in plan.judge_calls.items()]
    lines += ["", f"cost (realtime / batch; batch prices default to {plan.total_usd['batch_factor']:g}x list):"]
    for c in plan.costs:
        lines.append(f"  {c['stage']:8s} {c['model']:36s} {c['requests']:>9,} req {c['prompt_tokens']:>13,} in "
                     f"{c['completion_tokens']:>12,} out  {_usd(c['realtime_usd']):>14s} / {_usd(c['batch_usd'])}")
    lines.append(f"  total: {_usd(plan.total_usd['realtime_usd'])} realtime, {_usd(plan.total_usd['batch_usd'])} batch")
    if plan.schedule is not None:
        lines += ["", "GPU schedule:", str(plan.schedule)]
    if plan.missing_files:
        lines += ["", f"files not found yet ({len(plan.missing_files)}; `run` needs them):"]
        lines += [f"  {m}" for m in plan.missing_files]
    for title, items in (("errors", plan.errors), ("notes", plan.notes)):
        if items:
            lines += ["", f"{title}:"] + [f"  {x}" for x in items]
    return "\n".join(lines)
