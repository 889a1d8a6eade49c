"""Whole runs through Prefect (temporary API) with a batch-mode judge: realtime HTTP generation
plus a Batch API judge gives the dataset of a realtime judge at half the judge price, and a
run whose batches are still running leaves its rate shards pending (not failed), lists the
batches, and a later run collects them into the same dataset."""
from __future__ import annotations

import json

import pytest

from flows.cli import status_data
from flows.ultrafeedback import ultrafeedback
from tests.batch.conftest import control
from tests.deployments.helpers import published_tables, scripted
from tests.flows.test_backfill_flow import _artifacts

pytestmark = pytest.mark.http


def config(out, url: str, mode: str, max_wait_s: float = 30.0, gen_mode: str = "realtime"):
    gen = [f"{{name: http-{m}, serve: openai, model: gen-{m}, base_url: '{url}', concurrency: 2, mode: {gen_mode}, "
           "batch: {poll_interval_s: 0.05, max_wait_s: 30}}" for m in ("alpha", "beta")]
    judge = (f"[{{name: judge, kind: openai_compatible, model: judge, base_url: '{url}', answer_mode: text, "
             f"mode: {mode}, batch: {{poll_interval_s: 0.05, max_wait_s: {max_wait_s}}}}}]")
    return scripted(out, "generation.k=2", f"generation.models=[{', '.join(gen)}]", f"rating.endpoints={judge}",
                    "rating.judge=judge", "rating.prices={judge: {input_per_1m: 2.0, output_per_1m: 8.0}}",
                    "publish.plots=false")


def comparable(tables: dict) -> dict:
    return {k: t.drop_columns([c for c in t.column_names if "cost" in c]) for k, t in tables.items()}


def test_realtime_generation_with_a_batch_judge_and_batches_left_in_flight(prefect_harness, batch_server, tmp_path):
    ref = ultrafeedback(config=config(tmp_path / "rt", batch_server.url, "realtime"))
    assert ref["stages"]["rate"]["shards"]["failed"] == 0
    expected = published_tables(tmp_path / "rt")
    assert len(expected) >= 3 and all(t.num_rows for t in expected.values())

    got = ultrafeedback(config=config(tmp_path / "b", batch_server.url, "batch"))
    assert comparable(published_tables(tmp_path / "b")) == comparable(expected)
    rt_cost, b_cost = ref["stages"]["rate"]["cost"][0], got["stages"]["rate"]["cost"][0]
    assert b_cost["usd"] == pytest.approx(rt_cost["usd"] * 0.5) and b_cost["realtime_usd"] == pytest.approx(rt_cost["usd"])
    card = (tmp_path / "b" / "README.md").read_text() if (tmp_path / "b" / "README.md").exists() else \
        next((tmp_path / "b").rglob("README.md")).read_text()
    assert "Batch API" in card and f"{b_cost['usd']:.4f} USD paid" in card

    # Batches that do not end within max_wait_s: shards pending, batches listed, a later run collects.
    shards = ref["stages"]["rate"]["shards"]["written"]
    control(batch_server.url, "/_batch_faults", {"faults": [{"kind": "hold"}] * shards})
    state = ultrafeedback(config=config(tmp_path / "late", batch_server.url, "batch", max_wait_s=0),
                          return_state=True)
    first = state.result()
    rate = first["stages"]["rate"]
    arts = {a.key: a for a in _artifacts(state.state_details.flow_run_id) if a.key}
    table = json.loads(arts["scripted-batches-in-flight"].data)
    assert len(table) == shards and all(r["batch_id"] and r["requests"] > 0 and r["age_s"] >= 0 for r in table)
    assert rate["shards"].get("in_flight") == shards and rate["shards"]["failed"] == 0
    flight = status_data(str(tmp_path / "late"))
    assert len(flight["batches_in_flight"]) == shards
    assert {b["status"] for b in flight["batches_in_flight"]} <= {"validating", "in_progress"}
    assert all(s["state"] == "pending" for s in flight["stages"]["rate"]["shards"].values())
    creates = control(batch_server.url, "/_batch_stats")["creates"]
    control(batch_server.url, "/_batch_release", {})
    ultrafeedback(config=config(tmp_path / "late", batch_server.url, "batch"))
    assert control(batch_server.url, "/_batch_stats")["creates"] == creates  # collected, not resubmitted
    assert comparable(published_tables(tmp_path / "late")) == comparable(expected)
    assert status_data(str(tmp_path / "late"))["batches_in_flight"] == []


def test_generation_through_the_batch_api_gives_the_realtime_completions(prefect_harness, batch_server, tmp_path):
    ultrafeedback(config=config(tmp_path / "rt", batch_server.url, "realtime"))
    before = control(batch_server.url, "/_batch_stats")["creates"]
    out = ultrafeedback(config=config(tmp_path / "b", batch_server.url, "realtime", gen_mode="batch"))
    assert out["stages"]["generate"]["shards"]["failed"] == 0
    assert control(batch_server.url, "/_batch_stats")["creates"] == before + 2  # one batch per pool entry
    assert comparable(published_tables(tmp_path / "b")) == comparable(published_tables(tmp_path / "rt"))
