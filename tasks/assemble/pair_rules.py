"""Pair rules beyond UltraFeedback's: Tulu 3's, judge-free delta pairs, the on-policy subset.

Inputs: `Prompt`s (tasks.assemble.binarize) whose candidates carry the score the rule
needs (tulu3: the fine-grained score, i.e. the mean of the aspect ratings; delta: none),
a seed and the rule's settings (`PairRuleSet`). Outputs: picks (prompt, chosen, rejected),
counts of what each rule left out and why, and rows of the "preferences_rules" schema.

- tulu3 (Tulu 3's preference data): chosen = the highest mean of the aspects (ties: a
  seeded choice), rejected = a seeded choice among the completions whose mean is strictly
  lower, by at least `min_margin` when set. A prompt with no such completion is dropped.
- delta (delta learning): chosen = the completion of the named `stronger` model, rejected =
  that of the named `weaker` one; no judge is asked, so the rate stage may be skipped. A
  prompt that lacks either model's answer is dropped.
- on_policy: only pairs with the policy model on exactly one side, the side recorded
  (`policy_side`), as Tulu 3's on-policy subset; combine with tulu3.

A completion without a score never enters a scored rule: an unreadable or failed rating is
null and counted (`completions_without_score`), never a rating. Each prompt's draws use an
RNG seeded by (seed, rule set, prompt_id), so a pair does not move when other prompts do.
"""
from __future__ import annotations

import hashlib
import random

import pyarrow as pa

from storage.schemas import PREFERENCES_RULES
from tasks.assemble import frames
from tasks.assemble.binarize import Candidate, PairStats, Pick, Prompt, assistant_turn, user_turn
from tasks.assemble.config import PairRuleSet
from tasks.assemble.frames import _conversation, _texts, _turns


def _rng(seed: int, name: str, prompt_id: str) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{seed}:rule:{name}:{prompt_id}".encode()).hexdigest()[:16], 16))


def tulu3(prompts: list[Prompt], seed: int, rs: PairRuleSet, counts: dict) -> list[Pick]:
    picks = []
    for p in prompts:
        if len(p.candidates) < 2:
            counts["prompts_with_fewer_than_two"] = counts.get("prompts_with_fewer_than_two", 0) + 1
            continue
        rng = _rng(seed, rs.name, p.prompt_id)
        top = max(c.score for c in p.candidates)
        chosen = rng.choice([c for c in p.candidates if c.score == top])
        lower = [c for c in p.candidates if c.score < chosen.score and chosen.score - c.score >= rs.min_margin]
        if not lower:
            key = "prompts_without_lower_mean" if rs.min_margin == 0 else "prompts_without_margin"
            counts[key] = counts.get(key, 0) + 1
            continue
        picks.append((p, chosen, rng.choice(lower)))
    return picks


def delta(prompts: list[Prompt], seed: int, rs: PairRuleSet, counts: dict) -> list[Pick]:
    picks = []
    for p in prompts:
        rng = _rng(seed, rs.name, p.prompt_id)
        strong = [c for c in p.candidates if c.model == rs.stronger]
        weak = [c for c in p.candidates if c.model == rs.weaker]
        if not strong or not weak:
            counts["prompts_without_both_models"] = counts.get("prompts_without_both_models", 0) + 1
            continue
        picks.append((p, rng.choice(strong), rng.choice(weak)))
    return picks


def on_policy(picks: list[Pick], policy: str | None, counts: dict) -> list[Pick]:
    if policy is None:
        raise ValueError("on_policy: no pool entry is marked `policy: true`")
    kept = [x for x in picks if (x[1].model == policy) != (x[2].model == policy)]
    counts["pairs_without_policy_on_one_side"] = len(picks) - len(kept)
    return kept


def pick(prompts: list[Prompt], seed: int, rs: PairRuleSet, policy: str | None = None) -> tuple[list[Pick], dict]:
    """The set's picks and its counts (pairs made, what was left out and why)."""
    counts: dict = {}
    picks = (tulu3 if rs.rule == "tulu3" else delta)(prompts, seed, rs, counts)
    if rs.on_policy:
        picks = on_policy(picks, policy, counts)
    counts["pairs"] = len(picks)
    return picks, counts


def side(chosen: Candidate, rejected: Candidate, policy: str | None) -> str | None:
    if policy is None:
        return None
    return "chosen" if chosen.model == policy else "rejected" if rejected.model == policy else None


def rows(picks: list[Pick], rs: PairRuleSet, policy: str | None) -> list[dict]:
    """Rows of the "preferences_rules" schema (TRL's conversational preference format)."""
    out = []
    for p, c, r in picks:
        out.append({
            "prompt": user_turn(p.prompt), "prompt_id": p.prompt_id, "chosen": assistant_turn(c.response),
            "rejected": assistant_turn(r.response), "messages": user_turn(p.prompt) + assistant_turn(c.response),
            "score_chosen": c.score if rs.needs_judge else None, "score_rejected": r.score if rs.needs_judge else None,
            "chosen_model": c.model, "rejected_model": r.model, "rule": rs.rule,
            "policy_side": side(c, r, policy),
        })
    return out


# -- columnar publishing (the publisher's path: candidates point at completion rows) --------

def prompts_any(j, frame) -> list[Prompt]:
    """Every completion with a response as a candidate, scores left unset (NaN): for rules
    that need no judge. Mirrors tasks.assemble.frames.prompts without the score filter."""
    has = frame["has_response"].to_numpy()
    models, refs = frame["model"].to_numpy(), frame["_row"].to_numpy()
    ins = j.instructions.select(["source", "prompt_id", "instruction"]).to_pylist()
    out = []
    for i, row in enumerate(ins):
        lo, hi = int(j.offsets[i]), int(j.offsets[i + 1])
        cands = [Candidate(k - lo, models[k], "", float("nan"), int(refs[k])) for k in range(lo, hi) if has[k]]
        out.append(Prompt(row["source"], row["prompt_id"], row["instruction"], cands))
    return out


def policy_of(config: dict) -> str | None:
    """The pool entry marked `policy: true` in a run config dump, if any."""
    return next((m["name"] for m in (config.get("generation") or {}).get("models") or [] if m.get("policy")), None)


def build_sets(j, frame, sets: list[PairRuleSet], seed: int, policy: str | None, keep) -> list[tuple]:
    """(set, picks, counts) per configured set; `keep` filters prompts (TruthfulQA rule)."""
    out = []
    for rs in sets:
        if rs.needs_judge:
            scored, unscored = _scored(frames.prompts_by_score(j, frame, ["fine_grained"], PairStats())["fine_grained"])
        else:
            scored, unscored = prompts_any(j, frame), 0
        picks, counts = pick(keep(scored), seed, rs, policy)
        if rs.needs_judge:
            counts["completions_without_score"] = unscored
        out.append((rs, picks, counts))
    return out


def _scored(prompts: list[Prompt]) -> tuple[list[Prompt], int]:
    """The prompts with only their scored candidates (a parse failure is NaN, never a rating),
    and how many candidates were left out."""
    kept, dropped = [], 0
    for p in prompts:
        cands = [c for c in p.candidates if c.score == c.score]  # NaN != NaN
        dropped += len(p.candidates) - len(cands)
        kept.append(Prompt(p.source, p.prompt_id, p.prompt, cands))
    return kept, dropped


def rules_table(j, picks: list[Pick], rs: PairRuleSet, policy: str | None):
    """The set's picks as a "preferences_rules" Arrow table (texts taken from j's completions)."""
    prompt, chosen, rejected = _texts(j, picks)
    score = (lambda c: c.score) if rs.needs_judge else (lambda c: None)
    cols = {
        "prompt": _turns("user", prompt), "prompt_id": pa.array([p.prompt_id for p, _, _ in picks], pa.string()),
        "chosen": _turns("assistant", chosen), "rejected": _turns("assistant", rejected),
        "messages": _conversation(prompt, chosen),
        "score_chosen": pa.array([score(c) for _, c, _ in picks], pa.float64()),
        "score_rejected": pa.array([score(r) for _, _, r in picks], pa.float64()),
        "chosen_model": pa.array([c.model for _, c, _ in picks], pa.string()),
        "rejected_model": pa.array([r.model for _, _, r in picks], pa.string()),
        "rule": pa.array([rs.rule] * len(picks), pa.string()),
        "policy_side": pa.array([side(c, r, policy) for _, c, r in picks], pa.string()),
    }
    return pa.Table.from_arrays([cols[f.name] for f in PREFERENCES_RULES], schema=PREFERENCES_RULES)
