"""Binarization: H4 style, Argilla-clean style, all pairs, TruthfulQA removal, seeds."""
from __future__ import annotations

import hashlib

import pytest

from assemble_fixtures import ASPECTS, build, evol_rows, full, truthfulqa_questions, truthfulqa_rows, ultrachat_rows
from storage.schemas import to_table
from tasks.assemble.binarize import binarize, completion_score, normalize_question
from tasks.assemble.join import dataset_rows


def rows_for(prompts, plan):
    return dataset_rows(*build(prompts, plan))


def no_test(n):
    return 0


def pairs_of(prompts, plan, score="fine_grained", seed=42, test_rows=no_test, **kw):
    return binarize(rows_for(prompts, plan), score, seed, test_rows, **kw)


def response_index(msgs):
    # fixture responses read "Answer {j} by ..."
    assert [m["role"] for m in msgs] == ["assistant"]
    return int(msgs[0]["content"].split()[1])


def test_h4_chosen_is_best_rejected_is_another_and_columns_are_trl_conversational():
    prompts = evol_rows(1)
    p = pairs_of(prompts, [full([2, 5, 3, 1])])
    (row,) = p.h4_train
    assert response_index(row["chosen"]) == 1 and row["score_chosen"] == 5.0
    assert response_index(row["rejected"]) in (0, 2, 3)
    assert row["prompt"] == [{"role": "user", "content": prompts[0]["instruction"]}]
    assert row["prompt_id"] == hashlib.sha256(prompts[0]["instruction"].encode("utf-8")).hexdigest()
    assert row["messages"] == row["prompt"] + row["chosen"]
    assert set(row) == {"prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"}
    to_table(p.h4_train, "preferences_h4")  # validates under the explicit schema


def test_ties_h4_keeps_equal_scores_argilla_drops_them():
    p = pairs_of(evol_rows(2), [full([4, 4, 4, 4]), full([3, 5, 5, 1])])
    assert p.stats.h4_pairs == 2
    tie = next(r for r in p.h4_train if r["score_chosen"] == 4.0)
    assert tie["score_rejected"] == 4.0 and p.stats.h4_ties >= 1
    # all-equal prompt: no Argilla pair; the other prompt's top tie (5, 5) never pairs 5 vs 5
    assert p.stats.argilla_ties_dropped == 1
    (arg,) = p.argilla
    assert arg["chosen-rating"] == 5.0 and arg["rejected-rating"] < 5.0
    assert arg["chosen-model"] in ("vicuna-33b", "mpt-30b-chat")
    to_table(p.argilla, "preferences_argilla")


def test_all_pairs_are_every_strictly_better_worse_combination():
    p = pairs_of(evol_rows(1), [full([4, 4, 2, 1])])
    got = sorted((response_index(r["chosen"]), response_index(r["rejected"])) for r in p.all_train)
    assert got == [(0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # the 4-vs-4 tie is not a pair
    assert all(r["score_chosen"] > r["score_rejected"] for r in p.all_train)
    assert p.stats.all_pairs == 5


def test_single_completion_and_no_completion_give_no_pair():
    p = pairs_of(evol_rows(3), [full([5]), [], full([3, 2])])
    assert p.stats.h4_pairs == 1 and p.stats.prompts_with_fewer_than_two == 2
    assert len(p.argilla) == 1


def test_na_and_null_ratings_leave_completions_out_of_pairs_with_counts():
    plan = [[
        {"instruction_following": 5, "honesty": "N/A", "truthfulness": 5, "helpfulness": 5, "critique": 9},
        {"instruction_following": 3, "honesty": None, "truthfulness": 3, "helpfulness": 3, "critique": None},
        {"instruction_following": 2, "honesty": 2, "truthfulness": 2, "helpfulness": 2},  # critique missing
        {"response": None},
    ]]
    fine = pairs_of(evol_rows(1), plan, score="fine_grained")
    assert fine.stats.completions_without_score == 1  # the unparsed honesty
    assert fine.stats.completions_without_response == 1
    (row,) = fine.h4_train
    assert row["score_chosen"] == 5.0 and row["score_rejected"] == 2.0  # N/A left out of the mean
    overall = pairs_of(evol_rows(1), plan, score="overall")
    assert overall.stats.completions_without_score == 2 and overall.stats.prompts_with_fewer_than_two == 1
    # One aspect: N/A honesty has no score under score=honesty.
    honesty = pairs_of(evol_rows(1), plan, score="honesty")
    assert honesty.stats.completions_without_score == 2
    assert honesty.stats.h4_pairs == 0


def test_completion_score_rejects_unknown_setting():
    with pytest.raises(ValueError, match="publish.score"):
        completion_score({"overall_score": 1.0}, "vibes")


def test_truthfulqa_source_and_equal_questions_removed():
    tqa = truthfulqa_rows(2)
    # A ShareGPT-like prompt that equals a TruthfulQA question up to case and spacing.
    copied = {**ultrachat_rows(1)[0], "instruction": "  " + tqa[0]["instruction"].upper().replace(" ", "  ") + " "}
    later_question = truthfulqa_questions()[500]
    other = {**ultrachat_rows(2)[1], "instruction": later_question}
    prompts = tqa + [copied, other] + evol_rows(1)
    plan = [full([5, 1])] * len(prompts)
    p = pairs_of(prompts, plan, truthful_questions=set(truthfulqa_questions()))
    assert p.stats.dropped_truthful_qa_source == 2
    assert p.stats.dropped_truthful_qa_question == 2
    assert [r["prompt"][0]["content"] for r in p.h4_train] == [prompts[-1]["instruction"]]
    kept = pairs_of(prompts, plan, drop_truthful=False)
    assert kept.stats.h4_pairs == len(prompts)
    # A source configured under another name but of format truthful_qa is dropped by name.
    renamed = [{**t, "source": "tqa_subset"} for t in tqa]
    q = pairs_of(renamed, [full([5, 1])] * 2, truthful_sources={"tqa_subset"})
    assert q.stats.dropped_truthful_qa_source == 2 and q.stats.h4_pairs == 0


def test_normalize_question():
    assert normalize_question("  What is\tX? ") == normalize_question("what is x?")


def test_seeds_reproducible_and_seed_changes_draws():
    prompts = evol_rows(30)
    plan = [full([5, 3, 3, 3])] * 30

    def fingerprint(seed, order=None):
        rows = rows_for(prompts, plan)
        if order:
            rows = [rows[i] for i in order]
        p = binarize(rows, "fine_grained", seed, lambda n: 6)
        rej = {r["prompt_id"]: response_index(r["rejected"]) for r in p.h4_train + p.h4_test}
        return rej, sorted(r["prompt_id"] for r in p.h4_test)

    a, b = fingerprint(42), fingerprint(42)
    assert a == b
    reversed_order = fingerprint(42, order=list(range(29, -1, -1)))
    assert reversed_order == a  # independent of input order
    c = fingerprint(7)
    assert c[0] != a[0] and c[1] != a[1]
    assert len(a[1]) == 6


def test_split_is_by_prompt_and_shared_with_all_pairs():
    prompts = evol_rows(20)
    p = pairs_of(prompts, [full([5, 4, 2])] * 20, test_rows=lambda n: 5)
    test_ids = {r["prompt_id"] for r in p.h4_test}
    assert len(test_ids) == 5 and p.stats.h4_train == 15
    assert {r["prompt_id"] for r in p.all_test} == test_ids
    assert not test_ids & {r["prompt_id"] for r in p.all_train}
    assert len(p.all_train) == 15 * 3 and len(p.all_test) == 5 * 3


@pytest.mark.parametrize("score,expected", [("overall", (9.0, 2.0)), ("helpfulness", (5.0, 1.0))])
def test_score_setting_changes_ranking(score, expected):
    plan = [[
        {**{a: 5 for a in ASPECTS}, "critique": 2},
        {**{a: 1 for a in ASPECTS}, "critique": 9},
    ]]
    (row,) = pairs_of(evol_rows(1), plan, score=score).h4_train
    assert (row["score_chosen"], row["score_rejected"]) == expected
