"""SIGKILL the running pipeline at random points, rerun it, and get the same dataset.

One Prefect API serves every run of the module: the session's test API, a server process
of its own that outlives every kill (`prefect_api`). Generation and judging go over real
HTTP to two OpenAI-protocol test servers (tests/servers/openai_server.py) with a small
latency, so a run spends seconds in each stage. The CLI runs in its own process group
(tests/faults/kill_worker.py, which is the CLI plus an optional pause inside a shard
write) and is killed with SIGKILL:
- during generation (after a random number of answered generation requests),
- during rating (after a random number of journaled judge answers),
- inside a shard write: half a Parquet file in its temporary name, or a shard renamed
  into place before its done marker exists.
Each kill is followed by a rerun; the last rerun must finish. Then:
- the published tables equal those of an uninterrupted run with the same seed;
- the judge server answered no request twice, except requests that were answered but
  not yet journaled when a kill came (the journal cannot know of those): each such request
  is paid at most once more, and each kill leaves at most `max_concurrency` of them;
- every Parquet file the store or a done marker points to reads back with the content hash
  its marker records, and nothing under a temporary name was ever read (the outputs equal).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from flows.config import load_config
from storage.shards import ShardStore, table_hash
from tasks.rating.stage import _body, build_calls
from tests.deployments.helpers import published_tables
from tests.servers.fixtures import get_stats
from tests.servers.openai_server import JudgeServer
from tests.servers.server_state import request_fingerprint

pytestmark = [pytest.mark.http, pytest.mark.server]
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "sources"
JUDGE_CONCURRENCY = 2
RUN_TIMEOUT_S = 240


def run_config(out: Path, gen_url: str, judge_url: str) -> dict:
    """16 real instructions in 8 shards, 4 HTTP 'models', an HTTP judge in text mode."""
    def src(name, fmt, path):
        return {"name": name, "format": fmt, "path": str(path), "quota": 4}

    return {
        "name": "killed", "output": str(out), "seed": 42, "shard_size": 2,
        "sources": [src("truthful_qa", "truthful_qa", DATA / "truthfulqa" / "TruthfulQA.csv"),
                    src("sharegpt", "sharegpt", DATA / "sharegpt" / "ShareGPT_V3_filtered_500.json"),
                    src("ultrachat", "ultrachat", DATA / "ultrachat" / "ultra_eval.json"),
                    src("flan", "flan", str(DATA / "flan" / "*_train.tsv"))],
        "generation": {"k": 4, "models": [
            {"name": f"http-{m}", "serve": "openai", "model": f"gen-{m}", "base_url": gen_url, "concurrency": 1,
             "request_timeout_s": 30} for m in ("alpha", "beta", "gamma", "delta")]},
        "rating": {"endpoints": [{"name": "judge", "kind": "openai_compatible", "model": "judge", "base_url": judge_url,
                                  "answer_mode": "text", "max_concurrency": JUDGE_CONCURRENCY, "timeout_s": 30}],
                   "judge": "judge", "prices": {"judge": {"input_per_1m": 1.0, "output_per_1m": 2.0}}},
        "publish": {"plots": False},
    }


class Runner:
    """Starts the CLI on a config in its own process group, against the session's Prefect test API."""

    def __init__(self, prefect, tmp: Path, cfg: dict, name: str):
        self.prefect, self.out = prefect, Path(cfg["output"])
        self.config = tmp / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.logs = tmp / f"{name}-logs"
        self.logs.mkdir()
        self.runs = 0

    def start(self, pause: str | None = None) -> tuple[subprocess.Popen, Path]:
        self.runs += 1
        flag = self.logs / f"paused-{self.runs}"
        env = self.prefect.env(PYTHONPATH=str(ROOT), UF_TEST_PAUSE_FLAG=str(flag))
        if pause:
            env["UF_TEST_PAUSE"] = pause
        log = open(self.logs / f"run-{self.runs}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "tests.faults.kill_worker", "run", "--config",
                                 str(self.config), "--no-progress"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return proc, flag

    def log(self) -> str:
        return (self.logs / f"run-{self.runs}.log").read_text(errors="replace")[-6000:]

    def finish(self) -> None:
        proc, _ = self.start()
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            kill(proc)
        assert rc == 0, self.log()

    def kill_when(self, condition, pause: str | None = None) -> None:
        """Start a run and SIGKILL it as soon as `condition()` holds (it must not finish first)."""
        proc, flag = self.start(pause)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            while not condition(flag):
                assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the kill point:\n{self.log()}"
                assert time.monotonic() < deadline, f"kill point not reached:\n{self.log()}"
                time.sleep(0.02)
        finally:
            kill(proc)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def journaled(out: Path) -> set[str]:
    """Request ids with an answer in any journal of the run (torn lines skipped)."""
    ids = set()
    for path in (out / "journal" / "rate").glob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            try:
                ids.add(json.loads(line)["custom_id"])
            except (ValueError, KeyError):
                pass
    return ids


def quiet(url: str) -> dict:
    """Server stats once nothing is in flight (a killed client's requests finish or drop)."""
    deadline = time.monotonic() + 30
    while True:
        stats = get_stats(url)
        if stats["in_flight"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def fingerprints_by_request_id(cfg_path: Path) -> dict[str, str]:
    """Request id -> the test server's fingerprint of the same body, for every first-attempt
    judge request of the finished run (rebuilt from its shards the way the rate stage does)."""
    cfg = load_config(cfg_path)
    store = ShardStore(cfg.output)
    out = {}
    for comp in store.refs("generate"):
        calls, _ = build_calls(store.read_shard("sample", comp.shard_id), store.read_shard(comp), cfg.rating, cfg.seed)
        for call in calls:
            body, request_id = _body(call, cfg.rating)
            out[request_id] = request_fingerprint(body)
    return out


def check_store_integrity(out: Path) -> None:
    """Every done marker points at a readable Parquet file whose content hash it records."""
    store = ShardStore(str(out))
    markers = list(out.rglob("*.done.json"))
    assert markers
    for marker in markers:
        data = json.loads(marker.read_text())
        table = pq.read_table(data["path"]).replace_schema_metadata(None)
        assert table_hash(table) == data["sha256"], marker
        assert table.num_rows == data["rows"], marker
    for stage in ("sample", "generate", "rate", "assemble"):
        assert store.incomplete(stage) == [], stage


class QuietServer(JudgeServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a killed client resets its connections: expected here, not worth a traceback


@pytest.fixture(scope="module")
def servers():
    gen = QuietServer(latency_s=0.05, completion_words=40, models=("gen-alpha", "gen-beta", "gen-gamma", "gen-delta"))
    judges = [QuietServer(latency_s=0.04, rationale_words=12, models=("judge",)) for _ in range(2)]
    for s in (gen, *judges):
        s.start()
    try:
        yield gen, judges
    finally:
        for s in (gen, *judges):
            s.stop()


@pytest.fixture(scope="module")
def baseline(prefect_api, servers, tmp_path_factory):  # noqa: F811
    gen, (judge, _) = servers
    tmp = tmp_path_factory.mktemp("baseline")
    runner = Runner(prefect_api, tmp, run_config(tmp / "out", gen.url, judge.url), "baseline")
    runner.finish()
    stats = get_stats(judge.url)
    assert stats["duplicates"] == [] and stats["answered"] > 0
    return {"tables": published_tables(tmp / "out"), "judge_requests": stats["answered"],
            "fingerprints": fingerprints_by_request_id(runner.config)}


def test_sigkill_in_generation_rating_and_shard_writes_then_rerun_equals_a_clean_run(
        prefect_api, servers, baseline, tmp_path):  # noqa: F811
    gen, (_, judge) = servers
    rng = random.Random(int(os.environ.get("UF_KILL_SEED", "20260127")))
    out = tmp_path / "out"
    runner = Runner(prefect_api, tmp_path, run_config(out, gen.url, judge.url), "killed")
    gen_before = get_stats(gen.url)["answered"]
    kills: list[dict] = []

    def record(kind: str) -> None:
        stats = quiet(judge.url)
        kills.append({"kind": kind, "counts": {fp: r["answered"] for fp, r in stats["fingerprints"].items()},
                      "journaled": journaled(out)})

    def pause_kill(pause: str) -> None:
        runner.kill_when(lambda flag: flag.exists(), pause=pause)
        record(f"inside a shard write ({pause})")

    # during generation: some parts written, others in flight (64 requests in all)
    n_gen = rng.randint(8, 40)
    runner.kill_when(lambda _: get_stats(gen.url)["answered"] - gen_before >= n_gen)
    record(f"generation after {n_gen} answers")
    # half a completions shard in its temporary file (8 to merge, none merged yet)
    pause_kill(f"tmp:generate:{rng.randint(1, 3)}")
    # during rating: part of the judge's 128 answers journaled
    n_rate = rng.randint(10, 40)
    runner.kill_when(lambda _: len(journaled(out)) >= len(kills[-1]["journaled"]) + n_rate)
    record(f"rating after {n_rate} more journaled answers")
    # half a ratings shard in its temporary file; then one renamed into place before its marker
    pause_kill(f"tmp:rate:{rng.randint(1, 2)}")
    pause_kill(f"marker:rate:{rng.randint(1, 2)}")
    runner.finish()

    # the same dataset as the uninterrupted run
    tables = published_tables(out)
    assert sorted(tables) == sorted(baseline["tables"])
    for name, table in tables.items():
        assert table.equals(baseline["tables"][name]), name
    check_store_integrity(out)

    # the judge was paid again only for answers the journal could not have recorded
    stats = quiet(judge.url)
    fp_of = baseline["fingerprints"]
    assert set(stats["fingerprints"]) == set(fp_of.values())  # the mapping covers every request sent
    assert len(journaled(out)) == len(fp_of) == baseline["judge_requests"]
    # Answered by the server but not journaled when a kill came: only what was in flight then
    # (at most the judge's concurrency) is new at each kill; a rerun may pay for it once more.
    # Lost at a kill: answered since the previous kill and still not journaled (a request can
    # be lost at two kills: in flight at one, asked again, and in flight at the next).
    lost, previous = [], {}
    for k in kills:
        done = {fp_of[i] for i in k["journaled"]}
        lost.append({fp for fp, n in k["counts"].items() if n > previous.get(fp, 0) and fp not in done})
        previous = k["counts"]
        assert len(lost[-1]) <= JUDGE_CONCURRENCY, (k["kind"], len(lost[-1]))
    for fp, rec in stats["fingerprints"].items():
        times_lost = sum(fp in x for x in lost)
        assert rec["answered"] <= 1 + times_lost, (fp, rec, times_lost)
    extra = stats["answered"] - baseline["judge_requests"]
    assert extra == sum(r["answered"] - 1 for r in stats["fingerprints"].values()) <= sum(len(x) for x in lost)
    print(f"kills: {[k['kind'] for k in kills]}; judge answers {stats['answered']} for {baseline['judge_requests']} "
          f"requests: {extra} paid twice; answered but unjournaled at each kill: {[len(x) for x in lost]}")
