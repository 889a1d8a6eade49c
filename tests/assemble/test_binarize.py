"""Binarization: H4 style, Argilla-clean style, all pairs, TruthfulQA removal, seeds."""
from __future__ import annotations

import hashlib

import pytest

from storage.schemas import to_table
from tasks.assemble.binarize import binarize, completion_score, normalize_question
from tasks.assemble.config import PairSet, default_pairs
from tasks.assemble.join import dataset_rows
from tests.assemble.assemble_fixtures import (
    ASPECTS,
    build,
    evol_rows,
    full,
    truthfulqa_questions,
    truthfulqa_rows,
    ultrachat_rows,
)


def rows_for(prompts, plan):
    return dataset_rows(*build(prompts, plan))


def no_test(n):
    return 0


class Result:
    """Pair rows of one binarize call, by set and split, and its flat statistics."""

    def __init__(self, out, stats):
        self.out, self.stats = out, stats.as_dict()

    def __getitem__(self, key):
        name, split = key.split("/")
        return self.out[name][split]


def sets(score=None):
    """The default pair sets, or all four ranked by one score."""
    pairs = default_pairs()
    if score:
        pairs = {n: ps.model_copy(update={"score": score}) for n, ps in pairs.items()}
    return pairs


def pairs_of(prompts, plan, score=None, seed=42, test_rows=no_test, **kw):
    return Result(*binarize(rows_for(prompts, plan), sets(score), seed, test_rows, **kw))


def response_index(msgs):
    # fixture responses read "Answer {j} by ..."; the assistant turn is the last message
    assert msgs[-1]["role"] == "assistant"
    return int(msgs[-1]["content"].split()[1])


def test_h4_is_h4s_layout_chosen_best_overall_rejected_another():
    prompts = evol_rows(1)
    plan = [[{**{a: 5 for a in ASPECTS}, "critique": c} for c in (2, 9, 5, 1)]]
    p = pairs_of(prompts, plan)
    (row,) = p["h4/train_prefs"]
    text = prompts[0]["instruction"]
    assert response_index(row["chosen"]) == 1 and row["score_chosen"] == 9.0  # by overall_score, not the mean
    assert response_index(row["rejected"]) in (0, 2, 3)
    assert row["prompt"] == text and row["prompt_id"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert row["chosen"][0] == row["rejected"][0] == {"content": text, "role": "user"}
    assert row["messages"] == row["chosen"]
    assert p["h4/train_sft"] == p["h4/train_prefs"]
    (gen,) = p["h4/train_gen"]
    assert gen["messages"] == [{"content": text, "role": "user"}] and gen["chosen"] == row["chosen"]
    to_table(p["h4/train_prefs"], "preferences_h4")  # validates under the explicit schema


def test_trl_set_is_the_explicit_prompt_conversational_layout():
    prompts = evol_rows(1)
    p = pairs_of(prompts, [full([2, 5, 3, 1])])
    (row,) = p["trl/train"]
    assert response_index(row["chosen"]) == 1 and row["score_chosen"] == 5.0  # by the mean aspect rating
    assert row["prompt"] == [{"content": prompts[0]["instruction"], "role": "user"}]
    assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
    assert row["messages"] == row["prompt"] + row["chosen"]
    to_table(p["trl/train"], "preferences_trl")


def test_h4_takes_the_first_of_tied_best_and_keeps_ties_argilla_drops_them():
    p = pairs_of(evol_rows(2), [full([4, 4, 4, 4]), full([3, 5, 5, 1])], score="fine_grained")
    assert p.stats["h4.pairs"] == 2
    tie = next(r for r in p["h4/train_prefs"] if r["score_chosen"] == 4.0)
    assert response_index(tie["chosen"]) == 0 and tie["score_rejected"] == 4.0 and p.stats["h4.ties"] >= 1
    other = next(r for r in p["h4/train_prefs"] if r["score_chosen"] == 5.0)
    assert response_index(other["chosen"]) == 1  # first of the two 5s
    # all-equal prompt: no Argilla pair; the other prompt's top tie (5, 5) never pairs 5 vs 5
    assert p.stats["argilla.prompts_without_pair"] == 1
    (arg,) = p["argilla/train"]
    assert arg["chosen-rating"] == 5.0 and arg["rejected-rating"] < 5.0
    assert arg["chosen-model"] == "vicuna-33b" and arg["prompt"] == evol_rows(2)[1]["instruction"]
    assert [m["role"] for m in arg["chosen"]] == ["user", "assistant"]
    to_table(p["argilla/train"], "preferences_argilla")


def test_argilla_ranks_by_mean_aspect_rating_h4_by_overall_in_one_run():
    plan = [[{**{a: 5 for a in ASPECTS}, "critique": 2}, {**{a: 1 for a in ASPECTS}, "critique": 9}]]
    p = pairs_of(evol_rows(1), plan)
    (h4,) = p["h4/train_prefs"]
    (arg,) = p["argilla/train"]
    assert (h4["score_chosen"], h4["score_rejected"]) == (9.0, 2.0)
    assert (arg["chosen-rating"], arg["rejected-rating"]) == (5.0, 1.0)
    assert response_index(h4["chosen"]) == 1 and response_index(arg["chosen"]) == 0


def test_all_pairs_are_every_strictly_better_worse_combination():
    p = pairs_of(evol_rows(1), [full([4, 4, 2, 1])])
    got = sorted((response_index(r["chosen"]), response_index(r["rejected"])) for r in p["all_pairs/train"])
    assert got == [(0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # the 4-vs-4 tie is not a pair
    assert all(r["score_chosen"] > r["score_rejected"] for r in p["all_pairs/train"])
    assert p.stats["all_pairs.pairs"] == 5


def test_single_completion_and_no_completion_give_no_pair():
    p = pairs_of(evol_rows(3), [full([5]), [], full([3, 2])])
    assert p.stats["h4.pairs"] == 1 and p.stats["h4.prompts_with_fewer_than_two"] == 2
    assert len(p["argilla/train"]) == 1


def test_na_and_null_ratings_leave_completions_out_of_pairs_with_counts():
    plan = [[
        {"instruction_following": 5, "honesty": "N/A", "truthfulness": 5, "helpfulness": 5, "critique": 9},
        {"instruction_following": 3, "honesty": None, "truthfulness": 3, "helpfulness": 3, "critique": None},
        {"instruction_following": 2, "honesty": 2, "truthfulness": 2, "helpfulness": 2},  # critique missing
        {"response": None},
    ]]
    p = pairs_of(evol_rows(1), plan)
    assert p.stats["trl.completions_without_score"] == 1  # the unparsed honesty
    assert p.stats["completions_without_response"] == 1
    (row,) = p["trl/train"]
    assert row["score_chosen"] == 5.0 and row["score_rejected"] == 2.0  # N/A left out of the mean
    assert p.stats["h4.completions_without_score"] == 2 and p.stats["h4.prompts_with_fewer_than_two"] == 1
    # One aspect: N/A honesty has no score under score=honesty.
    honesty = pairs_of(evol_rows(1), plan, score="honesty")
    assert honesty.stats["h4.completions_without_score"] == 2 and honesty.stats["h4.pairs"] == 0


def test_completion_score_and_pair_set_reject_unknown_settings():
    with pytest.raises(ValueError, match="publish.pairs"):
        completion_score({"overall_score": 1.0}, "vibes")
    with pytest.raises(ValueError, match="unknown rule 'coin_flip'"):
        PairSet(rule="coin_flip", score="overall", layout="h4")


def test_truthfulqa_source_and_equal_questions_removed():
    tqa = truthfulqa_rows(2)
    # A ShareGPT-like prompt that equals a TruthfulQA question up to case and spacing.
    copied = {**ultrachat_rows(1)[0], "instruction": "  " + tqa[0]["instruction"].upper().replace(" ", "  ") + " "}
    later_question = truthfulqa_questions()[500]
    other = {**ultrachat_rows(2)[1], "instruction": later_question}
    prompts = tqa + [copied, other] + evol_rows(1)
    plan = [full([5, 1])] * len(prompts)
    p = pairs_of(prompts, plan, truthful_questions=set(truthfulqa_questions()))
    assert p.stats["dropped_truthful_qa_source"] == 2
    assert p.stats["dropped_truthful_qa_question"] == 2
    assert [r["prompt"] for r in p["h4/train_prefs"]] == [prompts[-1]["instruction"]]
    kept = pairs_of(prompts, plan, drop_truthful=False)
    assert kept.stats["h4.pairs"] == len(prompts)
    # A source configured under another name but of format truthful_qa is dropped by name.
    renamed = [{**t, "source": "tqa_subset"} for t in tqa]
    q = pairs_of(renamed, [full([5, 1])] * 2, truthful_sources={"tqa_subset"})
    assert q.stats["dropped_truthful_qa_source"] == 2 and q.stats["h4.pairs"] == 0


def test_normalize_question():
    assert normalize_question("  What is\tX? ") == normalize_question("what is x?")


def test_seeds_reproducible_and_seed_changes_draws():
    prompts = evol_rows(30)
    plan = [full([5, 3, 3, 3])] * 30

    def fingerprint(seed, order=None):
        rows = rows_for(prompts, plan)
        if order:
            rows = [rows[i] for i in order]
        p = Result(*binarize(rows, sets("fine_grained"), seed, lambda n: 6))
        rej = {r["prompt_id"]: response_index(r["rejected"]) for r in p["h4/train_prefs"] + p["h4/test_prefs"]}
        return rej, sorted(r["prompt_id"] for r in p["h4/test_prefs"])

    a, b = fingerprint(42), fingerprint(42)
    assert a == b
    reversed_order = fingerprint(42, order=list(range(29, -1, -1)))
    assert reversed_order == a  # independent of input order
    c = fingerprint(7)
    assert c[0] != a[0] and c[1] != a[1]
    assert len(a[1]) == 6


def test_split_is_by_prompt_shared_by_every_set_and_h4_halves_its_test_split():
    prompts = evol_rows(20)
    p = pairs_of(prompts, [full([5, 4, 2])] * 20, test_rows=lambda n: 5)
    test_ids = {r["prompt_id"] for r in p["h4/test_prefs"]}
    assert len(test_ids) == 5 and p.stats["h4.rows_train_prefs"] == 15
    assert {r["prompt_id"] for r in p["all_pairs/test"]} == test_ids == {r["prompt_id"] for r in p["trl/test"]}
    assert not test_ids & {r["prompt_id"] for r in p["all_pairs/train"]}
    assert len(p["all_pairs/train"]) == 15 * 3 and len(p["all_pairs/test"]) == 5 * 3
    sft, gen = p["h4/test_sft"], p["h4/test_gen"]
    assert (len(sft), len(gen)) == (2, 3)  # H4: the test part halved
    assert [r["prompt_id"] for r in sft + gen] == [r["prompt_id"] for r in p["h4/test_prefs"]]
    assert sft == p["h4/test_prefs"][:2] and all(r["messages"] == r["chosen"][:1] for r in gen)
    assert len(p["argilla/train"]) == 20  # Argilla's release has only a train split


def test_legacy_publish_keys_map_onto_pair_sets():
    from tasks.assemble.config import PublishConfig

    cfg = PublishConfig.model_validate({"score": "helpfulness", "all_pairs": False})
    assert sorted(cfg.pairs) == ["argilla", "h4", "trl"]
    assert cfg.pairs["trl"].score == cfg.pairs["argilla"].score == "helpfulness"
    assert cfg.pairs["h4"].score == "overall"
    with pytest.raises(ValueError, match="pairs.x.score"):
        PublishConfig.model_validate({"pairs": {"x": {"rule": "all_pairs", "score": "vibes", "layout": "trl"}}})
