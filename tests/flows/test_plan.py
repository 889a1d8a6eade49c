"""`ultrafeedback plan`: the full-size config's counts and costs, validation without the
source files, and the command line."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.config import ConfigError
from flows.plan import format_plan, judge_overhead, load_plan_config, make_plan

ROOT = Path(__file__).resolve().parents[2]
FULL = ROOT / "configs" / "ultrafeedback.yaml"


@pytest.fixture(scope="module")
def full_plan():
    return make_plan(load_plan_config(str(FULL)), origin="full")


def test_full_config_plans_the_originals_counts(full_plan):
    p = full_plan
    assert p.instructions == {"evol_instruct": 10_000, "false_qa": 2_339, "flan": 20_939, "sharegpt": 19_949,
                              "truthful_qa": 811, "ultrachat": 9_929}
    assert p.total_instructions == 63_967
    assert p.total_completions == 63_967 * 4 == 255_868
    assert len(p.completions) == 16 and sum(p.completions.values()) == pytest.approx(255_868)
    assert p.judge_calls == {"instruction_following": 63_967, "honesty": 63_967, "truthfulness": 63_967,
                             "helpfulness": 63_967, "critique": 255_868}
    assert p.total_judge_calls == 511_736
    assert p.judge["answer_mode"] == "text" and p.errors == []


def test_full_config_engines_and_gpu_slots(full_plan):
    engines = {e["engine"]: e for e in full_plan.engines}
    assert len(engines) == 14  # every open model once; gpt-4 and gpt-3.5-turbo are hosted
    assert engines["llama-2-70b-chat"]["gpu_slots"] == 4 and engines["llama-2-7b-chat"]["gpu_slots"] == 1
    assert all(e["starts"] == 1 for e in engines.values()) and full_plan.gpu_slots == "gpus"


def test_costs_are_priced_from_the_table_in_both_modes(full_plan):
    by_model = {c["model"]: c for c in full_plan.costs}
    assert set(by_model) == {"gpt-4", "gpt-3.5-turbo", "gpt-4o (instruction_following)", "gpt-4o (honesty)",
                             "gpt-4o (truthfulness)", "gpt-4o (helpfulness)", "gpt-4o (critique)"}
    crit = by_model["gpt-4o (critique)"]
    assert crit["requests"] == 255_868
    assert crit["realtime_usd"] == pytest.approx((crit["prompt_tokens"] * 2.5 + crit["completion_tokens"] * 10) / 1e6)
    assert crit["batch_usd"] == pytest.approx(crit["realtime_usd"] / 2)
    total = full_plan.total_usd
    assert total["realtime_usd"] == pytest.approx(sum(c["realtime_usd"] for c in full_plan.costs))
    assert total["batch_usd"] == pytest.approx(total["realtime_usd"] / 2) and total["realtime_usd"] > 100
    # Every aspect prompt holds the four completions: far more input than a critique per call.
    assert by_model["gpt-4o (honesty)"]["prompt_tokens"] / 63_967 > 2 * crit["prompt_tokens"] / 255_868


def test_the_original_judge_costs_more_and_an_unpriced_one_is_not_free():
    gpt4 = make_plan(load_plan_config(str(FULL), ["rating.endpoints.0.model=gpt-4"]))
    base = make_plan(load_plan_config(str(FULL)))
    assert gpt4.total_usd["realtime_usd"] > 5 * base.total_usd["realtime_usd"]
    odd = make_plan(load_plan_config(str(FULL), ["rating.endpoints.0.model=some-judge"]))
    assert any(c["realtime_usd"] is None for c in odd.costs)
    assert any("some-judge" in n and "unknown, not zero" in n for n in odd.notes)


def test_judge_overhead_is_measured_on_the_real_templates():
    four = judge_overhead("honesty", 4, "text")
    assert judge_overhead("honesty", 1, "text") < four < judge_overhead("truthfulness", 4, "text") + 200
    assert 200 < four < 2000


def test_missing_sources_are_listed_not_fatal_but_bad_fields_are_errors(full_plan):
    assert any("sharegpt" in m for m in full_plan.missing_files)
    assert not any("TruthfulQA.csv" in m for m in full_plan.missing_files)  # bundled
    with pytest.raises(ConfigError, match=r"generation\.k"):
        load_plan_config(str(FULL), ["generation.k=0"])
    with pytest.raises(ConfigError, match=r"rating"):
        load_plan_config(str(FULL), ["rating.judge=nobody"])
    bad = make_plan(load_plan_config(str(FULL), ["generation.models.2.chat_template=configs/nope.jinja"]))
    assert bad.errors == ["generation.models.2.chat_template: file not found: configs/nope.jinja"]


def test_unknown_count_without_expected_rows_is_said():
    p = make_plan(load_plan_config(str(FULL), ["sources.1.expected_rows=null"]))
    assert p.instructions["false_qa"] is None and p.total_instructions == 63_967 - 2_339
    assert any("sources.1 (false_qa)" in n and "expected_rows" in n for n in p.notes)


def test_cli_prints_text_and_json_in_seconds():
    started = time.monotonic()
    text = subprocess.run([sys.executable, "-m", "flows.cli", "plan", "--config", str(FULL)],
                          capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert time.monotonic() - started < 30  # seconds, not minutes, on a loaded 2-core machine
    assert "sample: 63,967 instructions" in text and "generate: 255,868 completions" in text
    assert "rate: 511,736 judge calls" in text
    assert "realtime" in text and "batch" in text and "total: $" in text
    out = subprocess.run([sys.executable, "-m", "flows.cli", "plan", "--config", str(FULL), "--json",
                          "--set", "generation.k=2"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    data = json.loads(out)
    assert data["total_completions"] == 63_967 * 2 and data["judge_calls"]["critique"] == 63_967 * 2
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "plan", "--config", str(FULL), "--set", "seed=x"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "seed" in bad.stderr


def test_format_plan_of_the_demo_config_has_no_paid_endpoint():
    demo = make_plan(load_plan_config(str(ROOT / "configs" / "demo.yaml")))
    assert demo.costs == [] and demo.total_usd["realtime_usd"] == 0
    assert demo.total_instructions == 10 and "engine starts" in format_plan(demo)


def test_unset_api_key_is_a_note_not_an_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = make_plan(load_plan_config(str(FULL)))
    assert "environment variable OPENAI_API_KEY is not set here; the run needs it" in p.notes and p.errors == []
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    assert not any("OPENAI_API_KEY" in n for n in make_plan(load_plan_config(str(FULL))).notes)


def test_full_config_shows_its_gpu_schedule(full_plan):
    sched = full_plan.schedule
    assert sched.startswith("generation schedule: 8 GPU(s)")
    rows = {line.split()[0]: line.split() for line in sched.splitlines()[2:]}
    assert rows["llama-2-70b-chat"][2] in {"0-3", "4-7"}  # tensor-parallel 4 takes four GPUs of the node
    assert rows["gpt-4"][1] == "-"  # a hosted model takes no GPU
    assert "GPU schedule:" in format_plan(full_plan)
    assert sched.splitlines()[-1].startswith("mode: static:")


def test_the_plan_shows_an_elastic_schedule():
    cfg = load_plan_config(str(FULL))
    cfg.generation.schedule.mode = "elastic"
    sched = make_plan(cfg).schedule
    assert sched.splitlines()[-1].startswith("mode: elastic:")
    assert sched.startswith("generation schedule: 8 GPU(s)")
