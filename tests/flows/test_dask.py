"""The scale-out option: the whole flow on a local Dask cluster (two single-thread worker
processes) through prefect-dask, with the same shards, the same cache and the same
dataset as the default thread-pool runner. In production pass the cluster settings
instead: DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1,
"dashboard_address": None}) (docs/operations.md)."""
from __future__ import annotations

import pytest

from flows.ultrafeedback import ultrafeedback
from storage.shards import ShardStore
from tests.deployments.helpers import published_tables, scripted

pytestmark = pytest.mark.dask


def test_flow_on_a_local_dask_cluster_matches_the_thread_pool(prefect_harness, tmp_path):
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner

    cfg = scripted(tmp_path / "dask")
    # the documented kwargs; the cluster is made here only to count what its workers ran
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, processes=True) as cluster, \
            Client(cluster) as client:
        on_dask = ultrafeedback.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        first = on_dask(config=cfg)
        ran = client.run(lambda dask_worker: dask_worker.state.executed_count)
        second = on_dask(config=cfg)  # cache records and markers work across the cluster's processes
    for stage in ("sample", "generate", "rate", "assemble"):
        assert first["stages"][stage]["shards"]["failed"] == 0, stage
        assert first["stages"][stage]["shards"]["written"] >= 1, stage
    assert all(not ShardStore(cfg.output).incomplete(s) for s in ("sample", "generate", "rate", "assemble"))
    shard_tasks = sum(sum(first["stages"][s]["shards"].values()) for s in first["stages"])
    assert len(ran) == 2 and sum(ran.values()) >= shard_tasks, ran
    assert all(second["stages"][s]["shards"]["written"] == 0 for s in second["stages"])

    reference = scripted(tmp_path / "threads")
    ultrafeedback(config=reference)
    mine, theirs = published_tables(cfg.output), published_tables(reference.output)
    assert sorted(mine) == sorted(theirs) and mine
    assert all(mine[name].equals(theirs[name]) for name in mine)
