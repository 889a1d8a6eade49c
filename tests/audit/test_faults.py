"""Planted judge faults: the audit finds each one with the right sign and size, and none
where none was planted (the fair judge, and the faults a judge does not have).

Each judge rates a run built from real HelpSteer answers through the real rate stage,
then the audit re-asks, with a fair second judge beside it (tests/audit/conftest.py).
"""
from __future__ import annotations

import pandas as pd
import pytest

from tasks.audit.run import figures, run_part
from tasks.backends.journal import Journal
from tasks.rating.scripted_faults import FaultyJudge
from tests.audit.conftest import MARKER, SELF, audit_config, rated

FAULTS = {"fair": {}, "first_position": {"bonus": 1}, "long": {"chars_per_point": 80}, "self": {"marker": MARKER}}


@pytest.fixture(scope="module")
def audits(run_tables, tmp_path_factory) -> dict[str, pd.DataFrame]:
    out = {}
    for fault, opts in FAULTS.items():
        d = tmp_path_factory.mktemp(fault)
        ins, comps, rates, cfg = rated(run_tables, d, fault, **opts)
        a = audit_config(sample=100, bootstrap=300)
        rows = run_part(ins, comps, rates, cfg, a, 11, FaultyJudge(fault=fault, **opts), Journal(d / "audit.jsonl"),
                        (cfg.endpoints[1], FaultyJudge(fault="fair"), Journal(d / "second.jsonl")))
        out[fault] = figures(rows, a, SELF, 11).to_pandas()
    return out


def pick(df: pd.DataFrame, probe: str, metric: str, aspect: str = "helpfulness", position: int | None = None):
    r = df[(df["probe"] == probe) & (df["metric"] == metric) & (df["aspect"] == aspect)]
    if position is not None:
        r = r[r["position"] == position]
    assert len(r) == 1, (probe, metric, aspect, position)
    return r.iloc[0]


def covers_zero(row) -> bool:
    return row["low"] <= 0 <= row["high"]


def test_first_position_judge_shows_a_first_position_shift(audits):
    df = audits["first_position"]
    for aspect in ("helpfulness", "instruction_following"):
        # +1 at Text 1 of 4, every text shown once at each position: +0.75 there, -0.25 elsewhere.
        first = pick(df, "position", "mean_shift", aspect, 1)
        assert first["value"] == pytest.approx(0.75) and first["low"] > 0.5
        for p in (2, 3, 4):
            assert pick(df, "position", "mean_shift", aspect, p)["value"] == pytest.approx(-0.25)
        flips = pick(df, "position", "flip_rate", aspect)
        assert flips["value"] > 0.05 and flips["low"] > 0


@pytest.mark.parametrize("fault", ["fair", "long", "self"])
def test_no_position_effect_where_none_was_planted(audits, fault):
    for p in (1, 2, 3, 4):
        row = pick(audits[fault], "position", "mean_shift", position=p)
        assert row["value"] == 0 and row["low"] == 0 and row["high"] == 0
    assert pick(audits[fault], "position", "flip_rate")["value"] == 0


def test_long_answer_judge_shows_length_correlation(audits):
    for metric in ("spearman", "within_instruction"):
        row = pick(audits["long"], "verbosity", metric)
        assert row["value"] > 0.7 and row["low"] > 0.5


@pytest.mark.parametrize("fault", ["fair", "first_position"])
def test_no_length_correlation_where_none_was_planted(audits, fault):
    for metric in ("spearman", "within_instruction"):
        row = pick(audits[fault], "verbosity", metric)
        assert abs(row["value"]) < 0.25 and covers_zero(row), (fault, metric, row.to_dict())


def test_self_preference_leaks_into_length_only_as_far_as_own_answers_are_longer(audits):
    # The own model's HelpSteer answers are the longest of their instruction more often
    # (mean length rank 2.72 of 4 against 2.30-2.58), so its +1 shows as a weak positive
    # within-instruction length correlation: real, small, and far below the long judge's.
    row = pick(audits["self"], "verbosity", "within_instruction")
    assert 0 < row["value"] < 0.25
    assert row["high"] < pick(audits["long"], "verbosity", "within_instruction")["low"]


def test_self_preferring_judge_shows_its_bonus(audits):
    gap = pick(audits["self"], "self_preference", "gap")
    assert gap["low"] > 0.5
    # Against the fair second judge's view of the same texts, exactly the planted +1 is left.
    excess = pick(audits["self"], "self_preference", "excess_over_second_judge")
    assert excess["value"] == pytest.approx(1.0) and excess["low"] == pytest.approx(1.0)


@pytest.mark.parametrize("fault", ["fair", "long"])
def test_no_self_preference_where_none_was_planted(audits, fault):
    assert covers_zero(pick(audits[fault], "self_preference", "gap"))
    assert covers_zero(pick(audits[fault], "self_preference", "excess_over_second_judge"))


def test_second_judge_agreement(audits):
    same = audits["fair"]  # the second judge follows the same fair rule: full agreement
    assert pick(same, "second_judge", "weighted_kappa")["value"] == pytest.approx(1.0)
    assert pick(same, "second_judge", "exact")["value"] == 1.0
    biased = audits["long"]  # length-driven ratings have nothing to do with the fair ones
    assert pick(biased, "second_judge", "weighted_kappa")["high"] < 0.4
    assert pick(biased, "second_judge", "exact")["value"] < 0.4
