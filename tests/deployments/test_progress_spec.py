"""Progress output outside a run, the rich display, the markdown summary, and the ops spec."""
from __future__ import annotations

import io
import textwrap

import pytest
from rich.console import Console

from deployments.bootstrap import job_template
from deployments.deploy import parameters
from deployments.spec import load_spec
from flows import progress
from flows.config import ConfigError
from tests.deployments.helpers import scripted

MANIFEST = {"stages": {
    "sample": {"a-00000": {"state": "done", "rows": 4}, "b-00000": {"state": "failed", "error": "InjectedFault: boom"}},
    "rate": {"a-00000": {"state": "done", "rows": 32}, "c-00000": {"state": "pending"}},
}}
SUMMARY = {"run": "My Run", "seed": 7, "stages": {
    "sample": {"shards": {"written": 1, "kept": 0, "cached": 0, "failed": 1}},
    "rate": {"shards": {"written": 1, "kept": 0, "cached": 0, "failed": 0},
             "cost": [{"stage": "rate", "model": "gpt-4o", "requests": 8, "prompt_tokens": 1000,
                       "completion_tokens": 500, "usd": 0.0075, "unpriced_requests": 0}]}}}


def test_everything_is_a_no_op_outside_a_flow_run():
    assert not progress.in_run()
    tracker = progress.track("sample", 3)
    assert tracker.artifact_id is None
    tracker.update({"written": 1})
    tracker.finish({"written": 2, "failed": 1})
    assert tracker.done == 3
    assert progress.publish_artifacts(MANIFEST, SUMMARY, "/runs/x") == []


def test_listeners_see_each_stage_and_a_broken_listener_cannot_stop_a_run():
    events = []

    class Recorder:
        def stage_started(self, stage, total):
            events.append(("start", stage, total))

        def shard_finished(self, stage, done, total, counts):
            events.append(("shard", stage, done, total))

        def stage_finished(self, stage, counts):
            events.append(("end", stage, counts["failed"]))

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("display died")

    with progress.listen(Recorder()), progress.listen(Broken()):
        t = progress.track("generate", 2)
        t.update({"written": 1, "kept": 0, "cached": 0, "failed": 0})
        t.finish({"written": 1, "kept": 0, "cached": 0, "failed": 1})
    assert events == [("start", "generate", 2), ("shard", "generate", 1, 2), ("shard", "generate", 2, 2),
                      ("end", "generate", 1)]
    progress.track("rate", 1).finish({"written": 1})  # no listener left
    assert len(events) == 4


def test_rich_display_shows_stage_bars_with_counts():
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=False, color_system=None)
    with progress.cli_display(console=console):
        t = progress.track("sample", 5)
        t.finish({"written": 3, "kept": 0, "cached": 1, "failed": 1})
    out = buf.getvalue()
    assert "sample" in out and "5/5" in out
    assert "3 written, 1 cached, 1 failed" in out
    with progress.cli_display(enabled=False) as display:
        assert display is None


def test_summary_markdown_counts_cost_and_backfill_hint():
    md = progress.summary_markdown(MANIFEST, SUMMARY, "/runs/x")
    assert "# Run `My Run` (seed 7)" in md
    assert "| sample | 2 | 1 | 1 | 0 | 1 | 0 | 0 | 1 | 4 |" in md
    assert "| rate | 2 | 1 | 0 | 1 | 1 | 0 | 0 | 0 | 32 |" in md
    assert "| rate | gpt-4o | 8 | 1,000 | 500 | 0.0075 |" in md
    assert "- `sample:b-00000` failed: InjectedFault: boom" in md
    assert "- `rate:c-00000` pending" in md
    assert "ultrafeedback backfill --out /runs/x" in md


def test_shard_table_lists_everything_until_it_gets_large(monkeypatch):
    rows, total = progress.shard_rows(MANIFEST)
    assert total == 4 and len(rows) == 4
    assert {"stage": "sample", "shard": "b-00000", "state": "failed", "rows": None,
            "error": "InjectedFault: boom"} in rows
    monkeypatch.setattr(progress, "MAX_TABLE_ROWS", 3)
    rows, total = progress.shard_rows(MANIFEST)
    assert total == 4 and [r["shard"] for r in rows] == ["b-00000", "c-00000"]
    assert progress.artifact_key("My Run/2024", "run-summary") == "my-run-2024-run-summary"


def test_shipped_spec_is_valid_and_parameters_come_from_the_config(tmp_path):
    spec = load_spec()
    assert set(spec.work_pools) == {"ultrafeedback-cpu", "ultrafeedback-gpu"}
    assert spec.concurrency_limits["ultrafeedback-judge"].slot_decay_per_second > 0
    by_name = {d.name: d for d in spec.deployments}
    assert by_name["scheduled"].cron and by_name["scheduled"].run_stages() == ["sample", "generate", "rate", "assemble"]
    assert {"sample", "generate", "rate", "assemble", "backfill"} <= set(by_name)
    cfg = scripted(tmp_path / "run")
    p = parameters(by_name["rate"], cfg)
    assert p["stages"] == ["rate"] and p["config"] == cfg.model_dump(mode="json")
    assert parameters(by_name["backfill"], cfg) == {"output": cfg.output}
    env = job_template(spec.work_pools["ultrafeedback-gpu"])["variables"]["properties"]["env"]["default"]
    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


@pytest.mark.parametrize("body, message", [
    ("deployments: [{name: x, flow: ultrafeedback, work_pool: nowhere}]", "deployments.0.work_pool: 'nowhere'"),
    ("deployments: [{name: x, flow: ultrafeedback, work_pool: cpu, cron: '61 * * * *'}]", "invalid cron"),
    ("deployments: [{name: x, flow: backfill, work_pool: cpu, stages: [rate]}]", "backfill flow takes its stages"),
    ("deployments: [{name: x, flow: ultrafeedback, work_pool: cpu, stages: [judge]}]", "deployments.0.stages.0"),
])
def test_spec_errors_name_the_field(tmp_path, body, message):
    path = tmp_path / "ops.yaml"
    path.write_text(textwrap.dedent(f"""\
        config: run.yaml
        work_pools: {{cpu: {{type: process}}}}
        {body}
        """))
    with pytest.raises(ConfigError, match=message):
        load_spec(path)
