"""The assemble stage inside the real flow (scripted backends, temporary Prefect API)."""
from __future__ import annotations

import pytest

from flows.config import load_config
from flows.ultrafeedback import ultrafeedback
from storage.shards import ShardStore
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG
# Keys are named after the run ("scripted" in the fixture config).
KEYS = ["scripted-leaderboard", "scripted-rating-distribution", "scripted-parse-failures",
        "scripted-cost", "scripted-sources", "scripted-pairs", "scripted-quality-report"]


def _artifacts(flow_run_id=None):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    flt = ArtifactFilter(key=ArtifactFilterKey(any_=KEYS))
    if flow_run_id is not None:
        flt.flow_run_id = ArtifactFilterFlowRunId(any_=[flow_run_id])
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=flt)


@pytest.fixture(scope="module")
def run_dir(prefect_harness, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow") / "run"
    cfg = load_config(CFG, ["publish.plots=true"], output=str(out))  # the test config has them off
    state = ultrafeedback(config=cfg, return_state=True)
    return out, cfg, state


def test_all_four_stages_publish_the_outputs(run_dir):
    out, _, state = run_dir
    summary = state.result()
    assert summary["stages"]["assemble"]["shards"]["written"] == 1
    pairs = summary["stages"]["assemble"]["pairs"]
    assert pairs["dropped_truthful_qa_source"] == 3 and pairs["h4.pairs"] > 0
    for rel in ["README.md", "report/report.md", "report/leaderboard.png", "dataset/train-00000-of-00001.parquet",
                "preferences/h4/train_prefs-00000-of-00001.parquet", "preferences/argilla/train-00000-of-00001.parquet"]:
        assert (out / rel).exists(), rel
    ref = ShardStore(str(out)).done("assemble", "published")
    assert ref is not None and ref.rows == len(list(out.rglob("*.png"))) + 2 + len(
        [p for p in out.glob("dataset*/*.parquet")]) + len(list((out / "preferences").rglob("*.parquet")))
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Position bias" not in card  # the judge audit measures it, assemble asks no judge
    assert "not the judgement of a GPT-4-class model" in card  # scripted judge: the card says so


def test_tables_are_published_as_artifacts_on_the_flow_run(run_dir):
    _, _, state = run_dir
    arts = _artifacts(state.state_details.flow_run_id)
    keys = {a.key for a in arts}
    assert set(KEYS) <= keys and not any("position-bias" in k for k in keys)
    leaderboard = next(a for a in arts if a.key == "scripted-leaderboard")
    assert leaderboard.type == "table" and "scripted-alpha" in str(leaderboard.data)
    report = next(a for a in arts if a.key == "scripted-quality-report")
    assert report.type == "markdown" and "# Quality report: scripted" in report.data


def test_unchanged_rerun_publishes_nothing_new(run_dir):
    out, cfg, _ = run_dir
    before = (out / "README.md").stat().st_mtime_ns
    summary = ultrafeedback(config=cfg, stages=["assemble"])
    assert summary["stages"]["assemble"]["shards"]["written"] == 0
    assert (out / "README.md").stat().st_mtime_ns == before


def test_changed_publish_setting_reassembles(run_dir):
    out, cfg, _ = run_dir
    fewer = {k: v for k, v in cfg.publish.pairs.items() if k != "all_pairs"}
    changed = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"pairs": fewer})})
    summary = ultrafeedback(config=changed, stages=["assemble"])
    assert summary["stages"]["assemble"]["shards"]["written"] == 1
    assert not list((out / "preferences" / "all_pairs").glob("*.parquet"))
    assert "config_name: all_pairs" not in (out / "README.md").read_text(encoding="utf-8")
