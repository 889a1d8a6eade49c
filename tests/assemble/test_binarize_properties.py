"""Invariants of the pair builders over arbitrary score patterns (hypothesis)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.schemas import to_table
from tasks.assemble.binarize import binarize
from tasks.assemble.config import default_pairs

SETS = {n: ps.model_copy(update={"score": "fine_grained"}) for n, ps in default_pairs().items()}

SCORE = st.one_of(st.none(), st.sampled_from([1.0, 2.0, 3.0, 3.5, 4.0, 5.0]))
PROMPT = st.lists(st.tuples(SCORE, st.booleans()), min_size=0, max_size=5)  # (score, has_response)


def _rows(plan):
    rows = []
    for i, comps in enumerate(plan):
        rows.append({"source": "ultrachat", "instruction": f"Question number {i}?",
                     "completions": [{"model": f"m{j}", "response": f"answer {i}.{j}" if ok else None,
                                      "overall_score": None, "fine-grained_score": s, "annotations": {}}
                                     for j, (s, ok) in enumerate(comps)]})
    return rows


def _index(row) -> int:
    return int(row["prompt"].removeprefix("Question number ").rstrip("?"))


@settings(max_examples=150, deadline=None)
@given(plan=st.lists(PROMPT, min_size=0, max_size=12), seed=st.integers(0, 2**31), test=st.integers(0, 5))
def test_pair_invariants(plan, seed, test):
    out, stats = binarize(_rows(plan), SETS, seed, lambda n: min(test, n))
    counts = stats.as_dict()
    scored = [[s for s, ok in comps if ok and s is not None] for comps in plan]
    eligible = [i for i, s in enumerate(scored) if len(s) >= 2]
    h4 = out["h4"]["train_prefs"] + out["h4"]["test_prefs"]
    assert sorted(_index(r) for r in h4) == eligible
    test_ids = {r["prompt_id"] for r in out["h4"]["test_prefs"]}
    assert len(test_ids) <= min(test, len([c for c in plan if sum(ok for _, ok in c) >= 2]))
    for r in h4:
        assert r["score_chosen"] == max(scored[_index(r)]) >= r["score_rejected"]
        assert r["chosen"] != r["rejected"]  # two different completions (responses are distinct)
        assert r["messages"] == r["chosen"] and r["chosen"][0] == r["rejected"][0]
    for r in out["argilla"]["train"]:
        assert r["chosen-rating"] > r["rejected-rating"]
    assert len(out["argilla"]["train"]) + counts["argilla.prompts_without_pair"] == len(eligible)
    every = out["all_pairs"]["train"] + out["all_pairs"]["test"]
    expected_all = sum(1 for s in scored for a in range(len(s)) for b in range(len(s)) if s[a] > s[b])
    assert len(every) == expected_all
    assert all(r["prompt_id"] in test_ids for r in out["all_pairs"]["test"] + out["trl"]["test"])
    assert not any(r["prompt_id"] in test_ids for r in out["all_pairs"]["train"] + out["trl"]["train"])
    if h4:
        to_table(h4, "preferences_h4")
    if every:
        to_table(every, "preferences_trl")
    if out["argilla"]["train"]:
        to_table(out["argilla"]["train"], "preferences_argilla")
    # Same inputs, same seed: same pairs.
    again, _ = binarize(_rows(plan), SETS, seed, lambda n: min(test, n))
    assert again == out
