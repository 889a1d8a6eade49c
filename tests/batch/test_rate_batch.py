"""The rate stage with a batch-mode judge: the same ratings as realtime at the batch price,
re-asks as a follow-up batch, and a shard left in flight then collected."""
from __future__ import annotations

import pytest

from tasks.errors import BatchInFlight
from tests.batch.batch_worker import rate
from tests.batch.conftest import control
from tests.servers.fixtures import get_stats

pytestmark = pytest.mark.http


def without_cost(table):
    return table.drop_columns(["cost_usd"])


def test_batch_mode_gives_the_realtime_ratings_at_half_the_price(batch_server, tmp_path):
    realtime, rt_stats = rate(batch_server.url, tmp_path / "rt", "realtime")
    batch, b_stats = rate(batch_server.url, tmp_path / "b", "batch")
    assert without_cost(batch).equals(without_cost(realtime))
    assert batch.num_rows == 60 and set(batch.column("parse_status").to_pylist()) <= {"ok", "na"}
    assert (b_stats.prompt_tokens, b_stats.completion_tokens) == (rt_stats.prompt_tokens, rt_stats.completion_tokens)
    assert b_stats.cost_usd == pytest.approx(rt_stats.cost_usd * 0.5) and rt_stats.cost_usd > 0
    assert control(batch_server.url, "/_batch_stats")["creates"] == 1
    stats = get_stats(batch_server.url)
    assert stats["answered"] == 48  # 24 realtime, 24 in the batch: the same fingerprints once each per route
    assert len(stats["duplicates"]) == 24


def test_reasks_go_out_as_a_follow_up_batch(batch_server, tmp_path):
    reference, _ = rate(batch_server.url, tmp_path / "ref", "batch")
    control(batch_server.url, "/_batch_faults", {"faults": [{"kind": "malformed", "count": 2}]})
    table, stats = rate(batch_server.url, tmp_path / "b", "batch")
    batches = control(batch_server.url, "/_batch_stats")["batches"]
    assert len(batches) == 3 and batches[2]["request_counts"]["total"] == 2 and stats.reasks == 2
    assert set(table.column("parse_status").to_pylist()) <= {"ok", "na"}
    assert table.drop_columns(["cost_usd", "request_id", "prompt_tokens", "completion_tokens"]).equals(
        reference.drop_columns(["cost_usd", "request_id", "prompt_tokens", "completion_tokens"]))


def test_a_shard_in_flight_is_collected_by_the_next_run(batch_server, tmp_path):
    reference, _ = rate(batch_server.url, tmp_path / "ref", "batch")
    control(batch_server.url, "/_batch_faults", {"faults": [{"kind": "hold"}]})
    with pytest.raises(BatchInFlight, match="still running"):
        rate(batch_server.url, tmp_path / "b", "batch", max_wait_s=0)
    control(batch_server.url, "/_batch_release", {})
    table, stats = rate(batch_server.url, tmp_path / "b", "batch")
    assert without_cost(table).equals(without_cost(reference))
    assert control(batch_server.url, "/_batch_stats")["creates"] == 2  # the reference's and this shard's
    assert stats.sent == 24 and stats.from_journal == 0
