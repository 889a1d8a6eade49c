"""The audit inside the real flow: scripted backends, a judge with planted faults (it
favours Text 1 and its own model's answers), a fair second judge and the PandaLM set;
the faults show in the dataset card, the audit report and the Prefect artifact, with
intervals, and a rerun sends nothing."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from flows.config import ConfigError, load_config
from flows.ultrafeedback import ultrafeedback
from storage.shards import ShardStore
from tests.paths import SCRIPTED_CONFIG

CFG = SCRIPTED_CONFIG
ENDPOINTS = ('rating.endpoints=[{name: scripted, kind: scripted, model: scripted-alpha, '
             'script: {fault: [first_position, self], marker: "[scripted-alpha]"}}, '
             '{name: second, kind: scripted, model: second-judge, script: {fault: fair}}]')
AUDIT = ["audit.enabled=true", "audit.sample=12", "audit.second_judge=second", "audit.bootstrap=300",
         "audit.human_sets=[{name: pandalm, format: pandalm, sample: 40}]", "rating.critique=false"]


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "run"
    cfg = load_config(CFG, [ENDPOINTS, *AUDIT], output=str(out))
    state = ultrafeedback(config=cfg, return_state=True)
    return out, cfg, state


def test_planted_faults_reach_the_card_and_the_artifact(run):
    out, cfg, state = run
    summary = state.result()["stages"]["audit"]
    assert summary["shards"]["failed"] == 0 and summary["shards"]["written"] == 2  # run + human-pandalm
    flagged = set(summary["flagged"])
    assert {"position/helpfulness/mean_shift@1", "self_preference/helpfulness/gap",
            "self_preference/helpfulness/excess_over_second_judge"} <= flagged

    res = ShardStore(str(out)).read_shard("audit", "results").to_pandas()
    first = res[(res["probe"] == "position") & (res["metric"] == "mean_shift") & (res["position"] == 1)]
    assert (first["low"] > 0).all()  # favours Text 1: a positive shift, interval clear of zero
    later = res[(res["probe"] == "position") & (res["metric"] == "mean_shift") & (res["position"] > 1)]
    assert (later["value"] < 0).all()

    card = (out / "README.md").read_text()
    assert "## Judge audit" in card and "### Position" in card and "### Humans" in card
    assert "audit/biases.png" in card and (out / "audit" / "biases.png").stat().st_size > 10_000
    assert "**yes**" in card and "annotator_pairwise_kappa" in card
    assert "| audit | scripted-alpha |" in card and "| audit | second-judge |" in card  # its own cost lines

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[
            "scripted-judge-audit", "scripted-judge-audit-report"])))
    assert {a.key for a in arts} == {"scripted-judge-audit", "scripted-judge-audit-report"}
    data = next(a for a in arts if a.key == "scripted-judge-audit").data
    table = pd.DataFrame(json.loads(data) if isinstance(data, str) else data)
    shift = table[(table["probe"] == "position") & (table["position"] == 1)]
    assert (shift["low"] > 0).all()


def test_rerun_sends_nothing(run):
    out, cfg, _ = run
    again = ultrafeedback(config=cfg, stages=["rate", "assemble"])["stages"]["audit"]
    assert again["shards"]["written"] == 0 and again["shards"]["failed"] == 0


def test_audit_names_are_checked():
    with pytest.raises(ConfigError, match="audit.second_judge"):
        load_config(CFG, ["audit.second_judge=nobody"])
    with pytest.raises(ConfigError, match="audit.self_model"):
        load_config(CFG, ["audit.self_model=nobody"])
