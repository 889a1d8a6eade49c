"""Invariants of the pair builders over arbitrary score patterns (hypothesis)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.schemas import to_table
from tasks.assemble.binarize import binarize

SCORE = st.one_of(st.none(), st.sampled_from([1.0, 2.0, 3.0, 3.5, 4.0, 5.0]))
PROMPT = st.lists(st.tuples(SCORE, st.booleans()), min_size=0, max_size=5)  # (score, has_response)


def _rows(plan):
    rows = []
    for i, comps in enumerate(plan):
        rows.append({"source": "ultrachat", "prompt_id": f"p{i:03d}", "instruction": f"Question number {i}?",
                     "completions": [{"model": f"m{j}", "response": f"answer {i}.{j}" if ok else None,
                                      "overall_score": None, "fine-grained_score": s, "annotations": {}}
                                     for j, (s, ok) in enumerate(comps)]})
    return rows


@settings(max_examples=150, deadline=None)
@given(plan=st.lists(PROMPT, min_size=0, max_size=12), seed=st.integers(0, 2**31), test=st.integers(0, 5))
def test_pair_invariants(plan, seed, test):
    p = binarize(_rows(plan), "fine_grained", seed, lambda n: min(test, n))
    scored = [[s for s, ok in comps if ok and s is not None] for comps in plan]
    eligible = [i for i, s in enumerate(scored) if len(s) >= 2]
    h4 = p.h4_train + p.h4_test
    assert sorted(r["prompt_id"] for r in h4) == [f"p{i:03d}" for i in eligible]
    assert len(p.h4_test) == min(test, len(eligible))
    test_ids = {r["prompt_id"] for r in p.h4_test}
    for r in h4:
        i = int(r["prompt_id"][1:])
        assert r["score_chosen"] == max(scored[i]) >= r["score_rejected"]
        assert r["chosen"] != r["rejected"]  # two different completions (responses are distinct)
    for r in p.argilla:
        assert r["chosen-rating"] > r["rejected-rating"]
    assert len(p.argilla) + p.stats.argilla_ties_dropped == len(eligible)
    expected_all = sum(1 for s in scored for a in range(len(s)) for b in range(len(s)) if s[a] > s[b])
    assert len(p.all_train) + len(p.all_test) == expected_all
    assert all(r["prompt_id"] in test_ids for r in p.all_test)
    assert not any(r["prompt_id"] in test_ids for r in p.all_train)
    if h4:
        to_table(h4, "preferences_h4")
    if p.argilla:
        to_table(p.argilla, "preferences_argilla")
    # Same inputs, same seed: same pairs.
    again = binarize(_rows(plan), "fine_grained", seed, lambda n: min(test, n))
    assert again.h4_train == p.h4_train and again.argilla == p.argilla
