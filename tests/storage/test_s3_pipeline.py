"""The whole pipeline on object storage: `output: s3://...` against a real local S3 API.

The S3 API is moto's server mode (a real HTTP server speaking the S3 protocol), reached
through s3fs exactly as a bucket would be: the CLI processes get the endpoint from
`FSSPEC_S3_ENDPOINT_URL` and credentials from the usual AWS variables. The scripted config
(tests/fixtures/configs/scripted.yaml) runs through the CLI in its own process group
against the session's Prefect test API, a server process of its own, and:
- an uninterrupted run gives the reference tables;
- a second run is SIGKILLed three times: with a completions shard moved into place but
  its done marker not written, with half a ratings shard in its temporary object, and
  with a ratings shard in place but no marker; a last rerun finishes;
- a third run has one ratings shard forced to fail (UF_FAIL_SHARDS), then a backfill
  finishes it.
Both end with the reference tables; every done marker in the bucket points at an object
whose content hash it records; the rating journals are on local disk, none in the bucket.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml

from flows.config import load_config
from storage.shards import table_hash
from tests.paths import SCRIPTED_CONFIG
from tests.servers.prefect_server import free_port, stop_process

pytestmark = [pytest.mark.s3, pytest.mark.server]
ROOT = Path(__file__).resolve().parents[2]
CFG = Path(SCRIPTED_CONFIG)
BUCKET = "uf-pipeline"
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free port, a bucket, and this process's fsspec pointed at it."""
    import fsspec
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {"FSSPEC_S3_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_conf = dict(fsspec.config.conf.get("s3", {}))
    os.environ.update({k: v for k, v in env.items() if k != "FSSPEC_S3_ENDPOINT_URL"})
    fsspec.config.conf["s3"] = {**saved_conf, "endpoint_url": url}
    fs = s3fs.S3FileSystem(endpoint_url=url, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    try:
        yield SimpleNamespace(url=url, env=env, fs=fs)
    finally:
        server.stop()
        fsspec.config.conf["s3"] = saved_conf
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Run:
    """The CLI on the scripted config with its output in the bucket, one process group per start."""

    def __init__(self, prefect, s3, tmp: Path, name: str):
        self.prefect, self.s3, self.name = prefect, s3, name
        self.out = f"s3://{BUCKET}/{name}"
        self.journal = tmp / f"journal-{name}"
        cfg = load_config(CFG, output=self.out).model_dump(mode="json")  # source paths made absolute
        cfg["rating"]["journal_dir"] = str(self.journal)
        self.config = tmp / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.logs = tmp / f"{name}-logs"
        self.logs.mkdir()
        self.starts = 0

    def start(self, *args: str, pause: str | None = None, **env: str) -> tuple[subprocess.Popen, Path]:
        self.starts += 1
        flag = self.logs / f"paused-{self.starts}"
        full = self.prefect.env(PYTHONPATH=str(ROOT), UF_TEST_PAUSE_FLAG=str(flag), **self.s3.env, **env)
        if pause:
            full["UF_TEST_PAUSE"] = pause
        cmd = list(args) or ["run", "--config", str(self.config)]
        log = open(self.logs / f"start-{self.starts}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "tests.faults.kill_worker", *cmd, "--no-progress"],
                                cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return proc, flag

    def log(self) -> str:
        return (self.logs / f"start-{self.starts}.log").read_text(errors="replace")[-6000:]

    def wait(self, *args: str, **env: str) -> int:
        proc, _ = self.start(*args, **env)
        try:
            return proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            stop_process(proc, grace_s=1)

    def kill_inside(self, pause: str) -> None:
        """Start a run and SIGKILL it where UF_TEST_PAUSE stops it (it must get there)."""
        proc, flag = self.start(pause=pause)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            while not flag.exists():
                assert proc.poll() is None, f"ended (rc {proc.returncode}) before {pause}:\n{self.log()}"
                assert time.monotonic() < deadline, f"{pause} not reached:\n{self.log()}"
                time.sleep(0.05)
        finally:
            stop_process(proc, grace_s=0)  # SIGTERM then SIGKILL of the group; the pause ignores neither
            if proc.poll() is None:
                proc.kill()


def tables(s3, name: str) -> dict:
    """Every published Parquet table of a run in the bucket, by path under the run."""
    s3.fs.invalidate_cache()
    base = f"{BUCKET}/{name}"
    out = {}
    for folder in ("dataset", "dataset_long", "preferences"):
        for path in sorted(s3.fs.glob(f"{base}/{folder}/**/*.parquet")):
            with s3.fs.open(path, "rb") as fh:
                out[path[len(base) + 1:]] = pq.read_table(io.BytesIO(fh.read()))
    return out


def check_markers(s3, name: str) -> int:
    """Every done marker points at an object whose content hash and rows it records."""
    s3.fs.invalidate_cache()
    markers = s3.fs.glob(f"{BUCKET}/{name}/**/*.done.json")
    for marker in markers:
        data = json.loads(s3.fs.cat_file(marker))
        assert data["path"].startswith(f"s3://{BUCKET}/{name}/"), data["path"]
        assert ".tmp-" not in data["path"]
        table = pq.read_table(io.BytesIO(s3.fs.cat_file(data["path"]))).replace_schema_metadata(None)
        assert table_hash(table) == data["sha256"] and table.num_rows == data["rows"], marker
    return len(markers)


@pytest.fixture(scope="module")
def reference(prefect_api, s3, tmp_path_factory):  # noqa: F811
    run = Run(prefect_api, s3, tmp_path_factory.mktemp("clean"), "clean")
    assert run.wait() == 0, run.log()
    got = tables(s3, "clean")
    assert {p.split("/")[0] for p in got} == {"dataset", "dataset_long", "preferences"}
    return got


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for path, table in got.items():
        assert table.equals(want[path]), path


def test_sigkill_inside_shard_writes_on_s3_then_rerun_equals_a_clean_run(prefect_api, s3, reference, tmp_path):  # noqa: F811
    run = Run(prefect_api, s3, tmp_path, "killed")
    run.kill_inside("marker:generate:2")  # a completions object in place, its marker not yet written
    run.kill_inside("tmp:rate:1")  # half a ratings shard streamed to its temporary object
    run.kill_inside("marker:rate:2")  # a ratings object in place, no marker
    assert run.wait() == 0, run.log()
    assert_same(tables(s3, "killed"), reference)
    assert check_markers(s3, "killed") >= 20
    manifest = json.loads(s3.fs.cat_file(f"{BUCKET}/killed/manifest.json"))
    assert all(st["state"] == "done" for stage in manifest["stages"].values() for st in stage.values())
    assert "schedule" in manifest["summary"]["stages"]["generate"]
    # journals stay on local disk (an object store cannot append durably); none in the bucket
    assert list(run.journal.glob("*.jsonl"))
    assert not s3.fs.glob(f"{BUCKET}/killed/journal/**")


def test_a_failed_shard_on_s3_is_backfilled(prefect_api, s3, reference, tmp_path):  # noqa: F811
    run = Run(prefect_api, s3, tmp_path, "filled")
    assert run.wait(UF_FAIL_SHARDS="rate:*") != 0
    s3.fs.invalidate_cache()
    failed = s3.fs.glob(f"{BUCKET}/filled/rate/*.failed.json")
    assert failed, run.log()
    assert run.wait("backfill", "--out", run.out) == 0, run.log()
    assert_same(tables(s3, "filled"), reference)
    s3.fs.invalidate_cache()
    assert not s3.fs.glob(f"{BUCKET}/filled/rate/*.failed.json")
    check_markers(s3, "filled")
