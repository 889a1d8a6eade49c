"""Seeded draws: reproducible per prompt, independent of order, faithful to the reference table."""
from __future__ import annotations

from collections import Counter

import pytest

from storage.keys import prompt_id
from tasks.generation.draws import draw_for_instruction, draw_models, rng_for
from tasks.generation.principles import PRINCIPLE_TABLE, system_prompts, table_row

POOL = [f"model-{c}" for c in "abcdefghij"]


def test_same_prompt_same_draw_and_pool_order_does_not_matter():
    pid = prompt_id("What is the boiling point of water at altitude?")
    a = draw_for_instruction(42, pid, "sharegpt", POOL, 4)
    b = draw_for_instruction(42, pid, "sharegpt", list(reversed(POOL)), 4)
    assert a == b
    assert draw_for_instruction(43, pid, "sharegpt", POOL, 4) != a  # the run seed matters


def test_draws_do_not_depend_on_other_prompts_or_order():
    pids = [prompt_id(f"instruction {i}") for i in range(50)]
    alone = {p: draw_for_instruction(7, p, "flan", POOL, 4) for p in pids}
    shuffled = {p: draw_for_instruction(7, p, "flan", POOL, 4) for p in reversed(pids)}
    assert alone == shuffled


def test_models_are_distinct_and_cover_the_pool_uniformly():
    counts = Counter()
    for i in range(4000):
        draws = draw_for_instruction(1, prompt_id(str(i)), "sharegpt", POOL, 4)
        models = [d.model for d in draws]
        assert len(set(models)) == 4
        assert [d.completion_index for d in draws] == [0, 1, 2, 3]
        counts.update(models)
    expected = 4000 * 4 / len(POOL)
    assert all(abs(c - expected) / expected < 0.06 for c in counts.values()), counts


def test_k_larger_than_pool_needs_allow_repeats():
    rng = rng_for(0, "x")
    with pytest.raises(ValueError, match="generation.k=5"):
        draw_models(rng, POOL[:3], 5)
    models = draw_models(rng, POOL[:3], 5, allow_repeats=True)
    assert len(models) == 5 and set(models) == set(POOL[:3])


@pytest.mark.parametrize("row", sorted(PRINCIPLE_TABLE))
def test_principle_shares_match_reference_table(row):
    n = 6000
    counts = Counter()
    for i in range(n // 4):
        for d in draw_for_instruction(42, prompt_id(f"{row} {i}"), row, POOL, 4):
            counts[d.principle] += 1
            assert d.system_prompt in system_prompts()[d.principle]
    for principle, share in PRINCIPLE_TABLE[row].items():
        assert abs(counts[principle] / n - share) < 0.02, (principle, counts[principle] / n, share)
    assert set(counts) <= set(PRINCIPLE_TABLE[row])


def test_reference_rows():
    assert PRINCIPLE_TABLE["evol_instruct"] == {"helpfulness": 1.0}
    assert PRINCIPLE_TABLE["flan"] == {"helpfulness": 0.8, "verbalized_calibration": 0.2}
    assert PRINCIPLE_TABLE["sharegpt"] == PRINCIPLE_TABLE["ultrachat"] == PRINCIPLE_TABLE["generic"]
    assert PRINCIPLE_TABLE["truthful_qa"] == PRINCIPLE_TABLE["false_qa"]
    assert PRINCIPLE_TABLE["false_qa"] == {"truthfulness": 0.5, "honesty": 0.45, "verbalized_calibration": 0.05}
    for shares in PRINCIPLE_TABLE.values():
        assert sum(shares.values()) == pytest.approx(1.0)
    assert table_row("jsonl") == table_row("csv") == table_row("parquet") == "generic"
    assert table_row("truthful_qa") == "truthful_qa"


def test_system_prompt_pools():
    pools = system_prompts()
    for principle in ("helpfulness", "honesty", "truthfulness"):
        assert len(pools[principle]) >= 10
        assert len(set(pools[principle])) == len(pools[principle])
    assert pools["verbalized_calibration"]
    assert all("Confidence: NN%" in p for p in pools["verbalized_calibration"])
    assert all(p.strip() == p and len(p) > 30 for pool in pools.values() for p in pool)


def test_system_prompt_drawn_uniformly_within_principle():
    counts = Counter()
    for i in range(3000):
        for d in draw_for_instruction(5, prompt_id(f"e{i}"), "evol_instruct", POOL, 4):
            counts[d.system_prompt] += 1
    pool = system_prompts()["helpfulness"]
    expected = 12000 / len(pool)
    assert set(counts) == set(pool)
    assert all(abs(c - expected) / expected < 0.1 for c in counts.values())


def test_unknown_row_is_an_error():
    with pytest.raises(ValueError, match="no principle distribution"):
        draw_for_instruction(1, "p", "nonsense", POOL, 2)


def test_policy_entry_is_in_every_instruction_at_a_drawn_slot():
    pids = [prompt_id(f"policy {i}") for i in range(200)]
    draws = {p: draw_for_instruction(9, p, "sharegpt", POOL, 4, policy=POOL[2]) for p in pids}
    for d in draws.values():
        models = [x.model for x in d]
        assert models.count(POOL[2]) == 1 and len(set(models)) == 4 and [x.completion_index for x in d] == [0, 1, 2, 3]
    slots = Counter(next(x.completion_index for x in d if x.model == POOL[2]) for d in draws.values())
    assert set(slots) == {0, 1, 2, 3} and min(slots.values()) > 30  # not always completion 0 (Text 1)
    # Without a policy the draws are what they always were.
    assert draw_for_instruction(9, pids[0], "sharegpt", POOL, 4) == draw_for_instruction(9, pids[0], "sharegpt", POOL, 4,
                                                                                          policy=None)


def test_at_most_one_policy_entry():
    from pydantic import ValidationError

    from tasks.generation.config import GenerationConfig

    models = [{"name": n, "serve": "scripted", "policy": i < 2} for i, n in enumerate(POOL[:4])]
    with pytest.raises(ValidationError, match="at most one pool entry is the policy"):
        GenerationConfig(k=3, models=models)
    models[1]["policy"] = False
    assert GenerationConfig(k=3, models=models).policy == POOL[0]
