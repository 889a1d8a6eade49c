"""The Prefect UI path as a person uses it, in headless Chromium against a real `prefect server`.

One server (with its UI), the work pools, the `ultrafeedback/scheduled` deployment of the
scripted config, and a process worker for the module. Then:

- a) the deployment's Run -> Custom run form: one source's quota is changed in the
  parameter form and the form submitted; the worker's run rewrites only the shards whose
  inputs changed (every other shard file keeps its modification time);
- b) a run with a shard forced to fail (`UF_FAIL_SHARDS` in the deployment's job
  environment) ends Failed; once the fault is removed from the deployment, the run's
  Retry button is clicked and only the failed shard (and its downstream shards) is written.

Needs Debian's `chromium` and `chromium-driver` (scripts/test.sh installs them); skipped
with that message when they are missing. A failing browser step leaves a screenshot and
prints the page's console errors and failed requests.
"""
from __future__ import annotations

import time

import pytest

from flows.config import RunConfig
from storage.shards import ShardStore
from tests.deployments.browser import MISSING, PrefectUI, browser_paths, headless_chromium
from tests.deployments.helpers import scripted, shard_mtimes
from tests.servers.prefect_server import PrefectServer

pytestmark = [pytest.mark.browser, pytest.mark.server]
POOL = "ultrafeedback-cpu"
DEPLOYMENT = "ultrafeedback/scheduled"
FAILED = "sharegpt-00000"
STAGES = ("sample", "generate", "rate")
RUN_TIMEOUT_S = 180
FAST = ("publish.plots=false",)  # the quality plots cost a run seconds and are not what is tested here


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    if browser_paths() is None:
        pytest.skip(MISSING)
    server = PrefectServer(tmp_path_factory.mktemp("prefect-ui-home"), ui=True)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def deployed(ui_server, tmp_path_factory):
    from deployments.bootstrap import bootstrap
    from deployments.deploy import deploy
    from deployments.spec import load_spec

    cfg = scripted(tmp_path_factory.mktemp("ui") / "run", *FAST)
    with ui_server.settings():
        bootstrap(load_spec())
        ids = deploy(load_spec(), cfg, pool=POOL, only=["scheduled"])
    ui_server.start_worker(POOL)
    return {"cfg": cfg, "id": ids[DEPLOYMENT]}


@pytest.fixture
def ui(ui_server, tmp_path):
    with headless_chromium() as driver:
        yield PrefectUI(driver, ui_server.ui_url, shots=tmp_path / "screenshots")


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _wait(server, flow_run_id, after_state=None, timeout_s=RUN_TIMEOUT_S):
    """The flow run once it is in a final state other than `after_state` (a state id)."""
    deadline = time.monotonic() + timeout_s
    with server.settings(), _client() as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final() and run.state.id != after_state:
                return run
            time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout_s}s:\n{server.log_tail()}")


def _start(server, **kwargs):
    """A new run of the deployment (as `prefect deployment run` makes it); its id."""
    from prefect.deployments import run_deployment

    with server.settings():
        return run_deployment(DEPLOYMENT, timeout=0, **kwargs).id


def _job_env(server, deployment_id: str, env: dict[str, str]) -> None:
    """Set the deployment's job environment; a worker reads it when it starts a run (or a retry)."""
    from prefect.client.schemas.actions import DeploymentUpdate

    with server.settings(), _client() as client:
        client.update_deployment(deployment_id, DeploymentUpdate(job_variables={"env": env}))


def _changed(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {name for name in set(before) | set(after) if before.get(name) != after.get(name)}


def test_custom_run_form_with_a_new_quota_recomputes_only_the_changed_shards(ui_server, deployed, ui):
    cfg = deployed["cfg"]
    baseline = _start(ui_server)  # the deployment's own parameters; it runs while the form is filled in
    with ui.shot_on_failure("custom-run"):
        ui.open_custom_run(deployed["id"])
        assert ui.source_quota("sharegpt").get_property("value") == "3"  # the deployment's value, filled in
        ui.set_source_quota("sharegpt", 5)
        assert _wait(ui_server, baseline).state.is_completed(), ui_server.log_tail()
        before = {s: shard_mtimes(cfg.output, s) for s in STAGES}
        flow_run_id = ui.submit_run()
    run = _wait(ui_server, flow_run_id)
    assert run.state.is_completed(), ui_server.log_tail()
    assert run.deployment_id is not None and str(run.deployment_id) == deployed["id"]
    # the form sent the deployment's config with exactly that one field changed (the form also
    # spells out optional fields the deployment leaves unset, as null: the same config)
    want = cfg.model_dump(mode="json")
    want["sources"][1]["quota"] = 5
    sent = run.parameters["config"]
    assert sent["sources"][1]["quota"] == 5
    assert RunConfig.model_validate(sent).model_dump(mode="json") == want

    # sharegpt 3 -> 5 rows with shard_size 4: its first shard changes and a second appears
    summary = ShardStore(cfg.output).read_manifest()["summary"]["stages"]
    for stage in STAGES:
        assert _changed(before[stage], shard_mtimes(cfg.output, stage)) == \
            {"sharegpt-00000.parquet", "sharegpt-00001.parquet"}, stage
        c = summary[stage]["shards"]
        assert (c["written"], c["kept"] + c["cached"], c["failed"]) == (2, 4, 0), (stage, c)
    assert summary["assemble"]["shards"]["written"] == 1


def test_retry_button_of_a_failed_run_writes_only_the_failed_shard(ui_server, deployed, ui, tmp_path):
    cfg = scripted(tmp_path / "run", *FAST)
    try:
        _job_env(ui_server, deployed["id"], {"UF_FAIL_SHARDS": f"sample:{FAILED}"})
        failed = _wait(ui_server, _start(ui_server, parameters={"config": cfg.model_dump(mode="json")}))
    finally:
        _job_env(ui_server, deployed["id"], {})  # the fault is fixed before anyone retries
    store = ShardStore(cfg.output)
    assert store.incomplete("sample") == [FAILED]
    assert failed.state.is_failed(), f"the run with a failed shard ended {failed.state.type.value}"
    before = {s: shard_mtimes(cfg.output, s) for s in STAGES}
    assert all(f"{FAILED}.parquet" not in before[s] for s in STAGES)

    with ui.shot_on_failure("retry"):
        ui.retry(str(failed.id))
    run = _wait(ui_server, failed.id, after_state=failed.state.id)
    assert run.state.is_completed(), ui_server.log_tail()
    with ui_server.settings(), _client() as client:  # the button's own state, not some other retry
        states = client.read_flow_run_states(failed.id)
    assert ("AwaitingRetry", "Retry from the UI") in [(s.name, s.message) for s in states]
    for stage in STAGES:
        assert _changed(before[stage], shard_mtimes(cfg.output, stage)) == {f"{FAILED}.parquet"}, stage
    assert all(not store.incomplete(s) for s in store.stages())
