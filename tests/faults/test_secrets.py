"""A recognisable fake API key never reaches a log line, artifact, output file or message.

The key is set as OPENAI_API_KEY and used for real: the CLI runs the whole pipeline with
generation (serve: openai) and the judge (kind openai) on OpenAI-protocol test servers
that accept any key and echo none, with transport faults and bad answers mixed in so the
error paths log too. A second run meets a judge that refuses the key (401), so the failure
path writes its messages as well. Then every place a secret could land is searched for it:
the CLI's stdout and stderr, every file under the output root (Parquet files are read and
their values searched, since compressed pages would hide a byte string), and the Prefect
server's home: its SQLite database (flow and task runs, parameters, log records,
artifacts) and its log, plus the log records and artifacts read back through the API.
The search is checked on planted copies of the key first, so it cannot pass by being blind.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.servers.openai_server import JudgeServer
from tests.servers.server_state import Fault

pytestmark = [pytest.mark.http, pytest.mark.server]
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "sources"
KEY = "sk-test-FAKE-" + secrets.token_hex(16)


class Server(JudgeServer):
    def handle_error(self, request, client_address) -> None:
        pass


def hits(root: Path, needle: str) -> list[str]:
    """Where `needle` occurs under `root`: raw bytes of every file, values of Parquet files,
    rows of SQLite databases."""
    found = []
    raw = needle.encode()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if raw in data:
            found.append(str(path))
        if path.suffix == ".parquet" and data[:4] == b"PAR1":
            if needle in json.dumps(pq.read_table(path).to_pylist(), default=str):
                found.append(f"{path} (values)")
        if data[:16] == b"SQLite format 3\x00":  # a value can straddle overflow pages: ask SQLite
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
                for t in tables:
                    rows = db.execute(f'select * from "{t}"')
                    if any(needle in (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
                           for row in rows for v in row):
                        found.append(f"{path} (table {t})")
    return found


def test_the_search_finds_planted_keys(tmp_path):
    (tmp_path / "a.log").write_text(f"oops {KEY}\n")
    # Compressed pages, no statistics: the key's bytes are not in the file, only in its values.
    values = [secrets.token_hex(24) for _ in range(2000)] + [f"...{KEY}..."]
    pq.write_table(pa.table({"x": values}), tmp_path / "b.parquet", compression="gzip", write_statistics=False)
    assert KEY.encode() not in (tmp_path / "b.parquet").read_bytes()
    with sqlite3.connect(tmp_path / "c.db") as db:
        db.execute("create table t (v text)")
        db.execute("insert into t values (?)", ("x" * 5000 + json.dumps({"k": KEY}) + "y" * 9000,))
    found = hits(tmp_path, KEY)
    assert found[:2] == [str(tmp_path / "a.log"), f"{tmp_path / 'b.parquet'} (values)"]
    assert f"{tmp_path / 'c.db'} (table t)" in found[2:]


def _config(out: Path, gen_url: str, judge_url: str) -> dict:
    def src(name, fmt, path):
        return {"name": name, "format": fmt, "path": str(path), "quota": 3}

    return {
        "name": "secrets", "output": str(out), "seed": 7, "shard_size": 3,
        "sources": [src("truthful_qa", "truthful_qa", DATA / "truthfulqa" / "TruthfulQA.csv"),
                    src("evol_instruct", "evol_instruct", DATA / "evol_instruct" / "WizardLM_testset.jsonl")],
        "generation": {"k": 2, "models": [
            {"name": f"api-{m}", "serve": "openai", "model": m, "base_url": gen_url, "api_key_env": "OPENAI_API_KEY",
             "request_timeout_s": 5} for m in ("a", "b")]},
        "rating": {"endpoints": [{"name": "gpt", "kind": "openai", "model": "gpt-4o", "base_url": judge_url,
                                  "answer_mode": "text", "timeout_s": 1}], "judge": "gpt"},
        "publish": {"plots": True},
    }


def _cli(prefect, cfg: dict, tmp: Path, name: str) -> subprocess.CompletedProcess:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = prefect.env(OPENAI_API_KEY=KEY, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(path), "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _api_records(prefect) -> tuple[list, list]:
    from prefect import get_client

    with prefect.settings(), get_client(sync_client=True) as client:
        return client.read_logs(), client.read_artifacts()


def test_a_fake_key_appears_in_no_output_log_artifact_or_message(prefect_server, tmp_path):  # noqa: F811
    gen = Server(faults=[Fault("503", count=2)]).start()
    judge = Server(faults=[Fault("500", count=3), Fault("reset", count=2), Fault("malformed", count=2)]).start()
    refusing = Server(api_key="sk-test-some-other-key").start()
    try:
        ok = _cli(prefect_server, _config(tmp_path / "out", gen.url, judge.url), tmp_path, "ok")
        refused = _cli(prefect_server, _config(tmp_path / "refused", gen.url, refusing.url), tmp_path, "refused")
    finally:
        for s in (gen, judge, refusing):
            s.stop()
    assert ok.returncode == 0, ok.stderr[-4000:]
    assert judge.state.stats()["faults"] and gen.state.stats()["faults"]  # the error paths ran
    # the refused run failed its rating shards with the message that names the variable, not the key
    failed = list((tmp_path / "refused" / "rate").glob("*.failed.json"))
    assert failed and all("OPENAI_API_KEY" in f.read_text() for f in failed)

    for proc in (ok, refused):
        assert KEY not in proc.stdout and KEY not in proc.stderr
    assert (tmp_path / "out" / "README.md").exists() and list((tmp_path / "out").rglob("*.parquet"))
    assert hits(tmp_path, KEY) == []  # outputs, manifests, journals, cache records, configs, engine logs
    assert hits(prefect_server.home, KEY) == []  # the Prefect database and server log
    logs, artifacts = _api_records(prefect_server)
    assert len(logs) > 20 and any("rate:" in log.message for log in logs)  # the records exist to be searched
    assert artifacts and not any(KEY in log.message for log in logs)
    assert not any(KEY in json.dumps(a.model_dump(mode="json"), default=str) for a in artifacts)
