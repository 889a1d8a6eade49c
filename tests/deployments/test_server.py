"""Against a real `prefect server` (SQLite): bootstrap, deploy, a process worker, runs
triggered with parameters, a forced shard failure (the run ends Failed), a backfill from
the CLI, the UI's Retry of a failed run, artifacts read back through the client, and a
rerun with changed parameters.

One server and one worker for the module; the scripted config keeps each pipeline run to
seconds. Runs are created the way the UI creates them (POST create_flow_run), with
`run_deployment`, or with `prefect deployment run`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.shards import ShardStore
from tests.deployments.helpers import SCRIPTED, expected_requests, scripted, shard_mtimes

pytestmark = pytest.mark.server
POOL = "ultrafeedback-cpu"
FAILED = "sharegpt-00000"
RUN_TIMEOUT_S = 240
ROOT = Path(__file__).resolve().parents[2]  # `deployments` is run from the checkout, not installed


def _run(server, *args, check=True, timeout=180):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=server.env(), timeout=timeout,
                          cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def deployed(prefect_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("ops") / "run"
    boots = [_run(prefect_server, "-m", "deployments.bootstrap").stdout]
    with prefect_server.settings():  # the second time in-process: same code, no interpreter start
        from deployments.bootstrap import bootstrap
        from deployments.spec import load_spec

        boots.append(bootstrap(load_spec()))
    dep = _run(prefect_server, "-m", "deployments.deploy", "--config", SCRIPTED, "--out", str(out),
               "--pool", POOL)
    prefect_server.start_worker(POOL)
    return {"out": str(out), "bootstrap": boots, "deploy": dep.stdout, "cfg": scripted(out)}


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _wait(server, flow_run_id, timeout_s=RUN_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    with server.settings(), _client() as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout_s}s:\n{server.log_tail()}")


def _trigger(server, name, **kwargs):
    from prefect.deployments import run_deployment

    with server.settings():
        run = run_deployment(name, timeout=0, **kwargs)
    return _wait(server, run.id)


def _artifacts(server, flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with server.settings(), _client() as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def _summary(out):
    return ShardStore(out).read_manifest()["summary"]["stages"]


def test_bootstrap_is_idempotent(deployed, prefect_server):
    first, second = deployed["bootstrap"]
    assert first.split() == ["created", "work-pool", "ultrafeedback-cpu", "created", "work-pool", "ultrafeedback-gpu",
                             "created", "limit", "ultrafeedback-judge", "created", "limit", "ultrafeedback-gpu-slots"]
    assert second == {"work-pool ultrafeedback-cpu": "unchanged", "work-pool ultrafeedback-gpu": "unchanged",
                      "limit ultrafeedback-judge": "unchanged", "limit ultrafeedback-gpu-slots": "unchanged"}
    from deployments.bootstrap import main

    with prefect_server.settings():
        assert main(["--check"]) == 0
    with prefect_server.settings(), _client() as client:
        gpu = client.read_work_pool("ultrafeedback-gpu")
        judge = client.read_global_concurrency_limit_by_name("ultrafeedback-judge")
        slots = client.read_global_concurrency_limit_by_name("ultrafeedback-gpu-slots")
    assert gpu.type == "process" and gpu.concurrency_limit == 1
    assert gpu.base_job_template["variables"]["properties"]["env"]["default"] == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert (judge.limit, judge.slot_decay_per_second) == (10, 5.0)
    assert (slots.limit, slots.slot_decay_per_second) == (1, 0.0)

    # someone changed the judge limit by hand: --check sees it, bootstrap puts it back
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from deployments.bootstrap import bootstrap
    from deployments.spec import load_spec

    with prefect_server.settings():
        with _client() as client:
            client.update_global_concurrency_limit("ultrafeedback-judge", GlobalConcurrencyLimitUpdate(limit=3))
        assert main(["--check"]) == 1
        actions = bootstrap(load_spec())
        assert actions["limit ultrafeedback-judge"] == "updated"
        assert [a for k, a in actions.items() if k != "limit ultrafeedback-judge"] == ["unchanged"] * 3
        with _client() as client:
            assert client.read_global_concurrency_limit_by_name("ultrafeedback-judge").limit == 10


def test_deployments_carry_the_config_and_the_schedule(deployed, prefect_server):
    lines = dict(line.split() for line in deployed["deploy"].splitlines())
    assert sorted(lines) == ["ultrafeedback-backfill/backfill", "ultrafeedback/assemble", "ultrafeedback/generate",
                             "ultrafeedback/rate", "ultrafeedback/sample", "ultrafeedback/scheduled"]
    cfg = deployed["cfg"]
    with prefect_server.settings(), _client() as client:
        sched = client.read_deployment_by_name("ultrafeedback/scheduled")
        rate = client.read_deployment_by_name("ultrafeedback/rate")
        back = client.read_deployment_by_name("ultrafeedback-backfill/backfill")
    assert [s.schedule.cron for s in sched.schedules] == ["0 3 * * 1"]
    assert sched.parameters == {"config": cfg.model_dump(mode="json"),
                                "stages": ["sample", "generate", "rate", "assemble"]}
    assert rate.parameters["stages"] == ["rate"] and rate.work_pool_name == POOL
    assert back.parameters == {"output": cfg.output} and back.entrypoint == "flows.backfill.backfill"
    # the UI's form is the pydantic config
    assert "config" in sched.parameter_openapi_schema["properties"]
    from deployments.deploy import deploy
    from deployments.spec import load_spec

    with prefect_server.settings():
        again = deploy(load_spec(), cfg, pool=POOL, only=["rate"])
    assert again == {"ultrafeedback/rate": lines["ultrafeedback/rate"]}  # updated in place, same id


def test_forced_failure_then_cli_backfill_reruns_only_that_shard(deployed, prefect_server):
    out, cfg = deployed["out"], deployed["cfg"]
    run = _trigger(prefect_server, "ultrafeedback/scheduled", job_variables={"env": {"UF_FAIL_SHARDS": f"sample:{FAILED}"}})
    assert run.state.is_failed() and f"sample:{FAILED}" in run.state.message, prefect_server.log_tail()
    store = ShardStore(out)
    assert store.incomplete("sample") == [FAILED] and _summary(out)["sample"]["shards"]["failed"] == 1
    arts = _artifacts(prefect_server, run.id)
    assert sorted(a.description.split(":")[0] for a in arts if a.type == "progress") == \
        ["assemble", "generate", "rate", "sample"]
    keys = {a.key: a for a in arts if a.key}
    assert {"scripted-shard-states", "scripted-run-summary"} <= set(keys)
    assert f"`sample:{FAILED}` failed: InjectedFault" in keys["scripted-run-summary"].data
    before = {s: shard_mtimes(out, s) for s in ("sample", "generate", "rate")}

    created = _run(prefect_server, "-m", "prefect", "deployment", "run", "ultrafeedback-backfill/backfill",
                   "--param", f'shards=["{FAILED}"]')
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", created.stdout).group(1)
    back = _wait(prefect_server, flow_run_id)
    assert back.state.is_completed(), prefect_server.log_tail()
    assert back.parameters["shards"] == [FAILED] and back.parameters["output"] == out

    assert store.incomplete("sample") == [] and all(not store.incomplete(s) for s in store.stages())
    summary = _summary(out)
    for stage in ("sample", "generate", "rate", "assemble"):
        assert summary[stage]["shards"]["written"] == 1 and summary[stage]["shards"]["failed"] == 0, stage
    want = expected_requests(cfg, store.done("sample", FAILED).rows)
    assert sum(e["requests"] for e in summary["generate"]["engines"]) == want["generate"]
    assert summary["rate"]["requests_sent_this_run"] == want["rate"]
    for stage, mtimes in before.items():
        after = shard_mtimes(out, stage)
        assert {f: t for f, t in after.items() if f != f"{FAILED}.parquet"} == mtimes, stage
    arts = _artifacts(prefect_server, back.id)
    assert len([a for a in arts if a.type == "progress"]) == 4
    table = json.loads(next(a for a in arts if a.key == "scripted-shard-states").data)
    assert {r["state"] for r in table} == {"done"}


def test_rerun_with_changed_parameters_recomputes_only_what_changed(deployed, prefect_server, tmp_path):
    base = scripted(tmp_path / "run")
    first = _trigger(prefect_server, "ultrafeedback/scheduled", parameters={"config": base.model_dump(mode="json")})
    assert first.state.is_completed(), prefect_server.log_tail()
    before = {s: shard_mtimes(base.output, s) for s in ("sample", "generate", "rate")}

    # sharegpt 3 -> 5 rows with shard_size 4: its first shard changes and a second appears
    bigger = scripted(tmp_path / "run", "sources.1.quota=5")
    second = _trigger(prefect_server, "ultrafeedback/scheduled", parameters={"config": bigger.model_dump(mode="json")})
    assert second.state.is_completed(), prefect_server.log_tail()
    summary = _summary(base.output)
    for stage in ("sample", "generate", "rate"):
        c = summary[stage]["shards"]
        assert (c["written"], c["kept"] + c["cached"], c["failed"]) == (2, 4, 0), (stage, c)
        after = shard_mtimes(base.output, stage)
        changed = {f for f in after if before[stage].get(f) != after[f]}
        assert changed == {"sharegpt-00000.parquet", "sharegpt-00001.parquet"}, stage
    assert summary["assemble"]["shards"]["written"] == 1


def test_a_run_with_a_failed_shard_ends_failed_and_retry_rewrites_only_that_shard(deployed, prefect_server, tmp_path):
    """The drill: a host whose judge breaks one shard, then fixed; the run is retried as the UI does."""
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.deployments.runner import EntrypointType, RunnerDeployment
    from prefect.states import State

    from deployments.bootstrap import ensure_pool
    from deployments.spec import PoolSpec
    from flows.ultrafeedback import ultrafeedback
    from tests.servers.prefect_server import stop_process

    pool, out = "ultrafeedback-drill", str(tmp_path / "drill")
    cfg = scripted(out)
    with prefect_server.settings():
        with _client() as client:
            ensure_pool(client, pool, PoolSpec(description="fault drill"))
        RunnerDeployment.from_flow(ultrafeedback, name="drill", parameters={"config": cfg.model_dump(mode="json")},
                                   work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH).apply()
    # the fault is in the worker's environment, as a broken host would be; the run's own parameters are clean
    faulty = prefect_server.start_worker(pool, log_name="drill-faulty.log", UF_FAIL_SHARDS=f"rate:{FAILED}")
    run = _trigger(prefect_server, "ultrafeedback/drill")
    stop_process(faulty)
    assert run.state.is_failed(), prefect_server.log_tail()
    assert f"1 shard(s) failed (rate:{FAILED})" in run.state.message
    store = ShardStore(out)
    assert store.incomplete("rate") == [FAILED]
    assert all(not store.incomplete(s) for s in ("sample", "generate", "assemble"))  # every other shard finished
    summary_art = next(a for a in _artifacts(prefect_server, run.id) if a.key == "scripted-run-summary")
    assert f"`rate:{FAILED}` failed: InjectedFault" in summary_art.data and "Retry this flow run" in summary_art.data
    before = {s: shard_mtimes(out, s) for s in ("sample", "generate", "rate")}

    # the UI's Retry button: POST /flow_runs/{id}/set_state {type: SCHEDULED, name: AwaitingRetry}, force false
    with prefect_server.settings(), _client() as client:
        accepted = client.set_flow_run_state(run.id, State(type=StateType.SCHEDULED, name="AwaitingRetry",
                                                           message="Retry from the UI"), force=False)
    assert accepted.status == SetStateStatus.ACCEPT, accepted.details
    prefect_server.start_worker(pool, log_name="drill-fixed.log")
    retried = _wait(prefect_server, run.id)
    assert retried.id == run.id and retried.run_count == 2
    assert retried.state.is_completed(), prefect_server.log_tail()

    assert all(not store.incomplete(s) for s in store.stages())
    summary = _summary(out)
    assert summary["rate"]["shards"]["written"] == 1 and summary["rate"]["shards"]["failed"] == 0
    want = expected_requests(cfg, store.done("sample", FAILED).rows)["rate"]
    assert summary["rate"]["requests_sent_this_run"] == want  # that shard's requests, no other
    for stage in ("sample", "generate"):
        assert summary[stage]["shards"]["written"] == 0, (stage, summary[stage]["shards"])
    assert {s: shard_mtimes(out, s) for s in ("sample", "generate")} == {s: before[s] for s in ("sample", "generate")}
    rate_after = shard_mtimes(out, "rate")  # only the failed shard was written again
    assert rate_after.pop(f"{FAILED}.parquet") and rate_after == before["rate"]
    assert summary["assemble"]["shards"]["written"] == 1  # the new ratings are published
