"""Pair rules: tulu3 (mean of aspects, rejected strictly lower, optional margin), delta
(stronger vs weaker model, no judge), the on-policy subset; published without critique,
loaded with `datasets`; and a parse failure never becomes a rating under any rule."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.assemble.binarize import Candidate, Prompt
from tasks.assemble.config import PublishConfig
from tasks.assemble.pair_rules import PairRuleSet, pick
from tasks.assemble.publish import publish
from tests.assemble.assemble_fixtures import ASPECTS, MODELS, build, evol_rows, ultrachat_rows

PROMPTS = evol_rows(4) + ultrachat_rows(2)


def _prompt(i: int, scores: list[float], models=MODELS) -> Prompt:
    p = PROMPTS[i]
    return Prompt(p["source"], f"p{i}", p["instruction"],
                  [Candidate(k, m, f"answer {k}", s) for k, (m, s) in enumerate(zip(models, scores))])


def test_tulu3_rejects_only_strictly_lower_means_and_honours_the_margin():
    rs = PairRuleSet(name="t", rule="tulu3")
    prompts = [_prompt(0, [4.5, 3.0, 4.5, 2.0]), _prompt(1, [3.0, 3.0, 3.0, 3.0]), _prompt(2, [4.0, 3.75, 3.5, 3.5])]
    picks, counts = pick(prompts, 1, rs)
    assert counts == {"pairs": 2, "prompts_without_lower_mean": 1}
    for p, chosen, rejected in picks:
        assert chosen.score == max(c.score for c in p.candidates) and rejected.score < chosen.score
    margin, counts = pick(prompts, 1, PairRuleSet(name="m", rule="tulu3", min_margin=1.0))
    assert counts == {"pairs": 1, "prompts_without_margin": 2}
    assert margin[0][0].prompt_id == "p0" and margin[0][1].score - margin[0][2].score >= 1.0


def test_delta_pairs_stronger_over_weaker_whatever_the_scores():
    rs = PairRuleSet(name="d", rule="delta", stronger=MODELS[1], weaker=MODELS[0])
    prompts = [_prompt(0, [5, 1, 3, 3]), _prompt(1, [5, 1, 3, 3], models=MODELS[1:] + MODELS[:1]),
               _prompt(2, [5, 1, 3], models=MODELS[1:])]
    picks, counts = pick(prompts, 1, rs)
    assert counts == {"pairs": 2, "prompts_without_both_models": 1}
    assert all(c.model == MODELS[1] and r.model == MODELS[0] for _, c, r in picks)
    with pytest.raises(ValidationError, match="stronger and weaker"):
        PairRuleSet(name="d", rule="delta", stronger=MODELS[1])


def test_on_policy_keeps_pairs_with_the_policy_on_one_side():
    rs = PairRuleSet(name="o", rule="tulu3", on_policy=True)
    prompts = [_prompt(0, [4, 3, 2, 1]), _prompt(1, [1, 4, 3, 2]), _prompt(2, [1, 2, 4, 3])]
    picks, counts = pick(prompts, 3, rs, policy=MODELS[0])
    assert all((c.model == MODELS[0]) != (r.model == MODELS[0]) for _, c, r in picks)
    assert counts["pairs"] + counts["pairs_without_policy_on_one_side"] == 3
    with pytest.raises(ValueError, match="policy"):
        pick(prompts, 3, rs, policy=None)


def _plan():
    """Six prompts, four completions each, no critique at all; completion 1 of prompt 0 has an
    unreadable helpfulness rating (it would be the best if it counted)."""
    plan = []
    for i in range(len(PROMPTS)):
        row = [{a: s for a in ASPECTS} for s in ([5, 3, 2, 1] if i % 2 else [2, 3, 4, 5])]
        plan.append(row)
    plan[0][1] = {**{a: 5 for a in ASPECTS}, "helpfulness": None}
    return plan


SETS = [PairRuleSet(name="tulu3", rule="tulu3"),
        PairRuleSet(name="tulu3_on_policy", rule="tulu3", on_policy=True),
        PairRuleSet(name="delta", rule="delta", stronger=MODELS[3], weaker=MODELS[0])]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    out = tmp_path_factory.mktemp("rules")
    ins, comps, rates = build(PROMPTS, _plan())
    assert "critique" not in set(rates["aspect"].to_pylist())
    publish_cfg = PublishConfig(test_size=1, pair_rules=SETS, plots=False)
    config = {"name": "rules", "generation": {"models": [{"name": MODELS[2], "policy": True}]},
              "publish": publish_cfg.model_dump(mode="json")}  # as the run config dump carries it
    result = publish(ins, comps, rates, output=str(out), config=config, seed=5, publish_cfg=publish_cfg)
    return out, result


def _load(out, folder, tmp_path):
    from datasets import load_dataset

    return load_dataset("parquet", data_files={"train": str(out / folder / "*.parquet")}, cache_dir=str(tmp_path))["train"]


def test_sets_without_critique_load_with_datasets(published, tmp_path):
    out, result = published
    ps = result.pair_stats
    for folder in ("preferences/argilla", "preferences/trl", "preferences/all_pairs"):
        assert list((out / folder).glob("*.parquet")), folder  # no overall_score needed
    # h4 ranks by overall_score, which only the critique gives: no pairs, none invented.
    assert not list((out / "preferences/h4").glob("*.parquet")) and ps["h4.pairs"] == 0
    tulu = _load(out, "preferences/tulu3", tmp_path)
    assert tulu.num_rows == ps["tulu3.pairs"] == 6
    assert all(row["score_chosen"] > row["score_rejected"] and row["rule"] == "tulu3" for row in tulu)
    assert tulu[0]["prompt"][0]["role"] == "user" and tulu[0]["chosen"][0]["role"] == "assistant"
    onp = _load(out, "preferences/tulu3_on_policy", tmp_path)
    assert onp.num_rows == ps["tulu3_on_policy.pairs"] > 0
    for row in onp:
        side = row["policy_side"]
        assert side in ("chosen", "rejected") and row[f"{side}_model"] == MODELS[2]
    delta = _load(out, "preferences/delta", tmp_path)
    assert delta.num_rows == ps["delta.pairs"] == 6
    assert all(r["chosen_model"] == MODELS[3] and r["rejected_model"] == MODELS[0] and r["score_chosen"] is None
               for r in delta)


def test_a_parse_failure_never_becomes_a_rating_under_any_rule(published, tmp_path):
    out, result = published
    # Completion 1 of prompt 0 (helpfulness unparsed), as assemble_fixtures writes its response.
    unreadable = f"Answer 1 by {MODELS[1]} to: {PROMPTS[0]['instruction'][:40]}"
    for folder in ("preferences/argilla", "preferences/trl", "preferences/all_pairs", "preferences/tulu3",
                   "preferences/tulu3_on_policy"):
        rows = _load(out, folder, tmp_path)
        assert rows.num_rows > 0
        for row in rows:
            for side in ("chosen", "rejected"):
                assert row[side][0]["content"] != unreadable, (folder, side)
    assert result.pair_stats["argilla.completions_without_score"] == 1
    assert result.pair_stats["tulu3.completions_without_score"] == 1
    assert result.pair_stats["tulu3_on_policy.completions_without_score"] == 1
    # delta asks no judge: the completion is paired on its model alone, with no score.
    delta = [r for r in _load(out, "preferences/delta", tmp_path) if r["score_chosen"] is not None]
    assert delta == []


def test_delta_needs_no_ratings_at_all(tmp_path):
    from storage.schemas import SCHEMAS

    ins, comps, _ = build(PROMPTS, _plan())
    cfg = PublishConfig(pair_rules=[SETS[2]], plots=False)
    assert cfg.judge_free and not PublishConfig(pair_rules=SETS).judge_free
    result = publish(ins, comps, SCHEMAS["ratings"].empty_table(), output=str(tmp_path), config={"name": "nojudge"},
                     seed=5, publish_cfg=cfg)
    assert result.pair_stats["delta.pairs"] == 6 and result.pair_stats["h4.pairs"] == 0
    assert _load(tmp_path, "preferences/delta", tmp_path / "c").num_rows == 6


def test_the_card_lists_the_rule_sets_as_configs_that_load_by_name(published, tmp_path):
    from datasets import load_dataset

    out, result = published
    card = (out / "README.md").read_text(encoding="utf-8")
    for name in ("tulu3", "tulu3_on_policy", "delta"):
        assert f"config_name: {name}" in card and f"preferences/{name}/train-*.parquet" in card
    tulu = load_dataset(str(out), "tulu3", cache_dir=str(tmp_path))["train"]
    assert tulu.num_rows == result.pair_stats["tulu3.pairs"] and tulu[0]["rule"] == "tulu3"
