"""Agreement with the bundled human sets: a judge built to agree with the human majority
scores high, one that answers at random scores near chance, and the reference figures
(annotators' own agreement, gpt-3.5-turbo's) come from the files themselves."""
from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.audit import humans
from tasks.audit.config import HumanSet
from tasks.audit.humans import oracle_labels
from tasks.audit.run import figures, human_part
from tasks.backends.journal import Journal
from tasks.errors import InputError
from tasks.rating.scripted_faults import FaultyJudge
from tests.audit.conftest import audit_config, rating_config
from tests.audit.test_faults import pick

SETS = [HumanSet(name="helpsteer", format="helpsteer", sample=120), HumanSet(name="pandalm", format="pandalm", sample=150)]


@pytest.fixture(scope="module")
def agreement(tmp_path_factory):
    out = {}
    for fault in ("oracle", "random"):
        d = tmp_path_factory.mktemp(fault)
        cfg = rating_config("text", fault=fault)
        rows = pa.concat_tables([human_part(hs, cfg, 3, FaultyJudge(fault=fault, oracle=oracle_labels),
                                            Journal(d / f"{hs.name}.jsonl"))
                                 for hs in SETS])
        out[fault] = figures(rows, audit_config(bootstrap=200, human_sets=SETS), None, 3).to_pandas()
    return out


def test_loaders_read_the_real_files():
    help_items = humans.load(SETS[0])
    assert len(help_items) == 500 and set(help_items[0].labels) == {"helpfulness", "truthfulness"}
    assert all(1 <= v <= 5 for it in help_items for v in it.labels.values())  # 0-4 shifted onto 1-5
    panda = humans.load(SETS[1])
    assert len(panda) == 999 and all(it.pairwise for it in panda)
    assert {it.preference for it in panda} == {0, 1, 2}
    assert panda[157].responses[0] == "True"  # a JSON boolean in the source file becomes text
    assert sum(it.baseline == "garbage" for it in panda) == 25  # gpt-3.5's unparsable verdicts


def test_oracle_judge_agrees_with_humans(agreement):
    df = agreement["oracle"]
    for aspect in ("helpfulness", "truthfulness"):
        assert pick(df, "human", "weighted_kappa", aspect)["value"] > 0.95
        assert pick(df, "human", "exact", aspect)["value"] > 0.95
    assert pick(df, "human", "agreement_with_majority", "preference")["value"] == 1.0
    assert pick(df, "human", "kappa_with_majority", "preference")["value"] == 1.0


def test_random_judge_is_near_chance(agreement):
    df = agreement["random"]
    for aspect in ("helpfulness", "truthfulness"):
        assert pick(df, "human", "weighted_kappa", aspect)["low"] < 0.05
        assert abs(pick(df, "human", "weighted_kappa", aspect)["value"]) < 0.25
    pref = pick(df, "human", "agreement_with_majority", "preference")
    # Random ratings prefer a, b or neither with 0.4 / 0.4 / 0.2: ~0.38 against this majority mix.
    assert 0.25 < pref["value"] < 0.5
    kappa = pick(df, "human", "kappa_with_majority", "preference")
    assert kappa["low"] < 0 < kappa["high"]


def test_reference_figures_sit_next_to_the_judges(agreement):
    for df in agreement.values():
        ann = pick(df, "human", "annotator_pairwise_kappa", "preference")
        assert 0.8 < ann["value"] < 0.95  # PandaLM reports 0.85-0.88 between its annotators
        gpt = pick(df, "human", "baseline_agreement_with_majority", "preference")
        assert 0.6 < gpt["value"] < 0.8  # 0.698 over all 999 rows


def test_any_table_works_the_same(tmp_path):
    src = humans.load(SETS[1])[:40]
    path = tmp_path / "mine.jsonl"
    import json
    with open(path, "w") as fh:
        for it in src:
            fh.write(json.dumps({"prompt": it.prompt, "response": it.responses[0], "response_b": it.responses[1],
                                 "label": {1: "a", 2: "b", 0: "tie"}[it.preference]}) + "\n")
    hs = HumanSet(name="mine", format="table", path=str(path), sample=40)
    cfg = rating_config("text", fault="oracle")
    rows = human_part(hs, cfg, 3, FaultyJudge(fault="oracle", oracle=oracle_labels), Journal(tmp_path / "j.jsonl"))
    df = figures(rows, audit_config(bootstrap=100, human_sets=[hs]), None, 3).to_pandas()
    assert pick(df, "human", "agreement_with_majority", "preference")["value"] == 1.0
    csv = tmp_path / "bad.csv"
    csv.write_text("prompt,response,label\nhi,there,9\n")
    with pytest.raises(InputError, match="outside scale"):
        humans.load(HumanSet(name="bad", format="table", path=str(csv), scale=(0, 4)))


def test_unreadable_answers_stay_null_and_are_counted(tmp_path):
    from tasks.rating.scripted import ScriptedJudge

    hs = HumanSet(name="helpsteer", format="helpsteer", sample=30)
    spoil = {"n": 0}

    def garble(body, answer):  # every third answer is not in the judge's format
        spoil["n"] += 1
        return "I would rather not say." if spoil["n"] % 3 == 0 else None

    cfg = rating_config("text", fault="fair")
    rows = human_part(hs, cfg, 3, ScriptedJudge(answer_fn=garble), Journal(tmp_path / "j.jsonl")).to_pandas()
    bad = rows[rows["parse_status"] == "unparsed"]
    assert len(bad) == 20 and bad["rating"].isna().all()  # 60 calls, one text each
    df = figures(human_part(hs, cfg, 3, ScriptedJudge(), Journal(tmp_path / "j.jsonl")), audit_config(
        bootstrap=100, human_sets=[hs]), None, 3).to_pandas()  # journaled answers come back as they were
    got = pick(df, "human", "not_compared", "helpfulness")
    assert got["value"] == (bad["aspect"] == "helpfulness").sum() and got["n"] == 30
    assert pick(df, "human", "exact", "helpfulness")["n"] == 30 - got["value"]


def test_human_set_settings_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="path"):
        HumanSet(name="mine", format="table")
    with pytest.raises(ValidationError, match="scale"):
        HumanSet(name="mine", format="table", path="x.csv", scale=(4, 0))
