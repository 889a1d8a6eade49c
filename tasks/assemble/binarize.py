"""Turn the assembled dataset into preference pair sets.

Inputs: rows of the "dataset" schema (see tasks.assemble.join), the configured pair sets
(tasks.assemble.config.PairSet: rule, score, layout), a seed and what counts as TruthfulQA.
Outputs: per pair set and split, the picked (prompt, chosen, rejected) triples, and
`PairStats`: everything left out and why.

Rules (`RULES`; another module may `register_rule` more):
- best_vs_random (HuggingFaceH4): chosen = the best-scored completion, the first one on
  ties; rejected = a seeded random one of the others, so ties can occur.
- best_vs_lower (Argilla): rejected drawn only among completions scored strictly lower;
  prompts with none are dropped and counted.
- all_pairs: every (better, worse) pair with a strict score difference.

Splits: the test prompts are drawn once per run from the prompts that can pair at all, so
every set's test split holds the same prompts and none leaks into another set's train
split. Layout h4 writes H4's six splits: *_prefs and *_sft hold the same pairs, test_sft
is the first half of the test prompts and test_gen the second half (H4's halving).

A completion enters the pairs only with a non-empty response and a score under the set's
score; the rest stay in the full dataset with nulls. Each prompt's draws use their own RNG
seeded from (seed, rule, prompt_id), so a prompt's pair does not change when other prompts
come or go. At full scale the publisher builds `Prompt`s whose candidates point (`ref`)
at completion rows (tasks.assemble.frames); both paths go through `choose`.
"""
from __future__ import annotations

import hashlib
import importlib
import random
from dataclasses import dataclass, field
from typing import Callable, Mapping

from storage.schemas import ASPECTS

TRUTHFUL_QA = "truthful_qa"


@dataclass(frozen=True)
class Candidate:
    index: int
    model: str
    response: str
    score: float
    ref: int = -1  # row of this completion in the caller's table (columnar publishing)


@dataclass
class Prompt:
    source: str
    prompt_id: str
    prompt: str
    candidates: list[Candidate]  # completions with a response (score: NaN when it has none)


Pick = tuple[Prompt, Candidate, Candidate]  # prompt, chosen, rejected
Rule = Callable[[list[Candidate], random.Random], "list[tuple[Candidate, Candidate]] | None"]


@dataclass
class PairStats:
    prompts: int = 0
    completions: int = 0
    dropped_truthful_qa_source: int = 0
    dropped_truthful_qa_question: int = 0
    completions_without_response: int = 0
    test_prompts: int = 0
    sets: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Flat: the run's counts, then `<set>.<count>` for each pair set."""
        out = {k: v for k, v in self.__dict__.items() if k != "sets"}
        for name, counts in self.sets.items():
            out.update({f"{name}.{k}": v for k, v in counts.items()})
        return out


def _best_first(cands: list[Candidate]) -> Candidate:
    return max(cands, key=lambda c: c.score)  # max() keeps the first of equal scores, as H4 does


def best_vs_random(cands: list[Candidate], rng: random.Random):
    chosen = _best_first(cands)
    return [(chosen, rng.choice([c for c in cands if c.index != chosen.index]))]


def best_vs_lower(cands: list[Candidate], rng: random.Random):
    chosen = _best_first(cands)
    lower = [c for c in cands if c.score < chosen.score]
    return [(chosen, rng.choice(lower))] if lower else None


def every_pair(cands: list[Candidate], rng: random.Random):
    ranked = sorted(cands, key=lambda c: (-c.score, c.index))
    return [(b, w) for i, b in enumerate(ranked) for w in ranked[i + 1:] if b.score > w.score]


RULES: dict[str, Rule] = {"best_vs_random": best_vs_random, "best_vs_lower": best_vs_lower, "all_pairs": every_pair}


def register_rule(name: str, rule: Rule) -> None:
    """Add a pair rule: rule(scored candidates (2 or more), rng) -> [(chosen, rejected)], or
    None when the prompt gives no pair (counted as `no_pair`)."""
    RULES[name] = rule


def known_rules() -> set[str]:
    try:  # rules kept in their own module register themselves on import
        importlib.import_module("tasks.assemble.pair_rules")
    except ModuleNotFoundError as exc:
        if exc.name != "tasks.assemble.pair_rules":
            raise
    return set(RULES)


def normalize_question(text: str) -> str:
    """Equality key for the TruthfulQA check: case and whitespace do not count."""
    return " ".join(text.split()).casefold()


def completion_score(completion: dict, score: str) -> float | None:
    """The completion's score under a pair set's score; None when it has none."""
    if score == "overall":
        return completion["overall_score"]
    if score == "fine_grained":
        return completion["fine-grained_score"]
    if score not in ASPECTS:
        raise ValueError(f"publish.pairs: unknown score {score!r}")
    rating = ((completion.get("annotations") or {}).get(score) or {}).get("Rating")
    try:
        return float(rating) if rating not in (None, "N/A") else None
    except ValueError:
        return None


def collect(rows: list[dict], score: str, stats: PairStats) -> list[Prompt]:
    """Candidates of every dataset row (prompt_id = sha256 of the instruction, as H4's)."""
    from storage.keys import prompt_id

    prompts = []
    for row in rows:
        cands = []
        for i, comp in enumerate(row["completions"]):
            stats.completions += 1
            if not (comp.get("response") or "").strip():
                stats.completions_without_response += 1
                continue
            value = completion_score(comp, score)
            cands.append(Candidate(i, comp["model"], comp["response"], float("nan") if value is None else value))
        prompts.append(Prompt(row["source"], prompt_id(row["instruction"]), row["instruction"], cands))
    stats.prompts = len(prompts)
    return prompts


def drop_truthful_qa(prompts: list[Prompt], sources: set[str], questions: set[str], stats: PairStats) -> list[Prompt]:
    """Remove TruthfulQA prompts: by source name, then by equality with a TruthfulQA question."""
    keys = {normalize_question(q) for q in questions}
    kept = []
    for p in prompts:
        if p.source in sources or p.source == TRUTHFUL_QA:
            stats.dropped_truthful_qa_source += 1
        elif normalize_question(p.prompt) in keys:
            stats.dropped_truthful_qa_question += 1
        else:
            kept.append(p)
    return kept


def drop_truthful_qa_all(by_score: Mapping[str, list[Prompt]], sources: set[str], questions: set[str],
                         stats: PairStats) -> dict[str, list[Prompt]]:
    """`drop_truthful_qa` once (counted once) for the same prompts collected under several scores."""
    if not by_score:
        return {}
    first = next(iter(by_score.values()))
    kept = {p.prompt_id for p in drop_truthful_qa(first, sources, questions, stats)}
    return {s: [p for p in ps if p.prompt_id in kept] for s, ps in by_score.items()}


def _rng(seed: int, kind: str, prompt_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{kind}:{prompt_id}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def pick_test_prompts(prompt_ids: list[str], test_rows: int, seed: int) -> list[str]:
    """Seeded choice of the test prompts, in their drawn order; independent of input order."""
    ordered = sorted(set(prompt_ids))
    random.Random(seed).shuffle(ordered)
    return ordered[:test_rows]


def pairs_of(prompts: list[Prompt], rule: str, seed: int, counts: dict[str, int]) -> list[Pick]:
    """Apply one rule to the prompts' scored candidates; counts what is left out."""
    apply = RULES[rule]
    picks: list[Pick] = []
    for p in prompts:
        scored = [c for c in p.candidates if c.score == c.score]  # NaN: no score under this set's score
        counts["completions_without_score"] += len(p.candidates) - len(scored)
        if len(scored) < 2:
            counts["prompts_with_fewer_than_two"] += 1
            continue
        got = apply(scored, _rng(seed, rule, p.prompt_id))
        if not got:
            counts["prompts_without_pair"] += 1
            continue
        counts["ties"] += sum(c.score == r.score for c, r in got)
        picks.extend((p, c, r) for c, r in got)
    counts["pairs"] = len(picks)
    return picks


def split_picks(picks: list[Pick], layout: str, test_ids: list[str]) -> dict[str, list[Pick]]:
    """The layout's splits of one set's picks (see the module docstring)."""
    rank = {pid: i for i, pid in enumerate(test_ids)}
    half = len(test_ids) // 2
    train = [x for x in picks if x[0].prompt_id not in rank]
    test = sorted((x for x in picks if x[0].prompt_id in rank), key=lambda x: rank[x[0].prompt_id])
    if layout == "argilla":
        return {"train": picks}
    if layout == "trl":
        return {"train": train, "test": test}
    first = [x for x in test if rank[x[0].prompt_id] < half]
    second = [x for x in test if rank[x[0].prompt_id] >= half]
    return {"train_prefs": train, "test_prefs": test, "train_sft": train, "test_sft": first,
            "train_gen": train, "test_gen": second}


@dataclass
class Choice:
    """The pairs of one run as picks: set name -> split -> picks."""

    sets: dict[str, dict[str, list[Pick]]]
    stats: PairStats


def choose(prompts_by_score: Mapping[str, list[Prompt]], pair_sets: Mapping, seed: int,
           test_rows: Callable[[int], int], stats: PairStats) -> Choice:
    """Every pair set of collected (and filtered) prompts. `prompts_by_score[score]` holds the
    same prompts and candidates scored under `score`; `test_rows(n)` gives the test prompts
    for n prompts that can pair."""
    any_prompts = next(iter(prompts_by_score.values()), [])
    eligible = [p.prompt_id for p in any_prompts if len(p.candidates) >= 2]
    test_ids = pick_test_prompts(eligible, test_rows(len(set(eligible))), seed)
    stats.test_prompts = len(test_ids)
    out = {}
    for name, ps in pair_sets.items():
        counts = {"pairs": 0, "ties": 0, "prompts_without_pair": 0, "prompts_with_fewer_than_two": 0,
                  "completions_without_score": 0}
        picks = pairs_of(prompts_by_score[ps.score], ps.rule, seed, counts)
        out[name] = split_picks(picks, ps.layout, test_ids)
        counts.update({f"rows_{split}": len(v) for split, v in out[name].items()})
        stats.sets[name] = counts
    return Choice(out, stats)


def user_turn(prompt: str) -> list[dict]:
    return [{"content": prompt, "role": "user"}]


def assistant_turn(response: str) -> list[dict]:
    return [{"content": response, "role": "assistant"}]


def pair_row(layout: str, split: str, p: Prompt, chosen: Candidate, rejected: Candidate) -> dict:
    """One pair as a row of its layout's schema (preferences_h4 / _trl / _argilla)."""
    if layout == "argilla":
        return {"source": p.source, "prompt": p.prompt,
                "chosen": user_turn(p.prompt) + assistant_turn(chosen.response), "chosen-rating": chosen.score,
                "chosen-model": chosen.model, "rejected": user_turn(p.prompt) + assistant_turn(rejected.response),
                "rejected-rating": rejected.score, "rejected-model": rejected.model}
    conversation = user_turn(p.prompt) + assistant_turn(chosen.response)
    if layout == "trl":  # explicit prompt: chosen/rejected hold only the assistant turn
        return {"prompt": user_turn(p.prompt), "prompt_id": p.prompt_id, "chosen": assistant_turn(chosen.response),
                "rejected": assistant_turn(rejected.response), "messages": conversation,
                "score_chosen": chosen.score, "score_rejected": rejected.score}
    return {"prompt": p.prompt, "prompt_id": p.prompt_id, "chosen": conversation,
            "rejected": user_turn(p.prompt) + assistant_turn(rejected.response),
            "messages": user_turn(p.prompt) if split.endswith("_gen") else conversation,
            "score_chosen": chosen.score, "score_rejected": rejected.score}


def binarize(rows: list[dict], pair_sets: Mapping, seed: int, test_rows: Callable[[int], int],
             truthful_sources: set[str] = frozenset(), truthful_questions: set[str] = frozenset(),
             drop_truthful: bool = True) -> tuple[dict[str, dict[str, list[dict]]], PairStats]:
    """All pair sets of one run as row dicts: set -> split -> rows, and the statistics."""
    stats = PairStats()
    scores = sorted({ps.score for ps in pair_sets.values()})
    by_score = {}
    for score in scores:
        scratch = PairStats()  # every score sees the same completions: count them once
        by_score[score] = collect(rows, score, scratch if by_score else stats)
    if drop_truthful:
        by_score = drop_truthful_qa_all(by_score, set(truthful_sources), set(truthful_questions), stats)
    c = choose(by_score, pair_sets, seed, test_rows, stats)
    out = {name: {split: [pair_row(pair_sets[name].layout, split, *x) for x in picks]
                  for split, picks in splits.items()} for name, splits in c.sets.items()}
    return out, c.stats
