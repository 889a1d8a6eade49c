"""The FLAN converter on real FLAN rows (the bundled chain-of-thought files and the
collection's task catalogue), read back by the sampler's per-task path."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.sources.adapters import flan_cot
from tasks.sources.config import SamplingConfig, SourceConfig
from tasks.sources.sampling import select

ROOT = Path(__file__).resolve().parents[2]
FLAN = ROOT / "data" / "sources" / "flan"
CATALOGUE = str(FLAN / "flan_collection_info.csv")
TSVS = sorted(str(p) for p in FLAN.glob("*_train.tsv"))

_spec = importlib.util.spec_from_file_location("convert_flan", ROOT / "scripts" / "convert_flan.py")
convert_flan = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_flan)


def test_cot_files_become_one_parquet_per_task_named_as_the_catalogue_names_them(tmp_path):
    summary = convert_flan.convert(TSVS, str(tmp_path), convert_flan.read_catalogue(CATALOGUE), subsets=("CoT",))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert files == ["CoT/cot_strategyqa.parquet", "CoT/stream_aqua.parquet", "CoT/stream_creak.parquet",
                     "CoT/stream_ecqa.parquet", "CoT/stream_qasc.parquet", "CoT/stream_sensemaking.parquet"]
    assert summary["tasks"] == 6 and summary["read"] == 1200
    aqua = pq.read_table(tmp_path / "CoT" / "stream_aqua.parquet")
    assert aqua.schema.names == ["task", "inputs", "targets"]
    # The same questions and references the sampler's own CoT reader gets from the TSV.
    want = flan_cot(str(FLAN / "aqua_train.tsv"))
    assert aqua["inputs"].to_pylist() == [r["instruction"] for r in want]
    assert aqua["targets"].to_pylist() == [r["reference_answer"] for r in want]
    assert summary["written"] + summary.get("duplicate", 0) == 1200


def test_default_subsets_are_the_originals_per_task_submixes(tmp_path):
    summary = convert_flan.convert(TSVS, str(tmp_path), convert_flan.read_catalogue(CATALOGUE))
    assert summary["tasks"] == 0 and summary["skipped_CoT"] == 1200  # CoT is the sampler's `path` part
    assert convert_flan.DEFAULT_SUBSETS == ("Flan2021", "T0", "NIv2")


def test_records_export_takes_submix_from_the_record_or_the_catalogue(tmp_path):
    """The mixtures' record exports (inputs, targets, _task_name, _task_source), here holding
    the real CoT rows under the catalogue's task names."""
    rows = flan_cot(str(FLAN / "creak_train.tsv"))[:30]
    export = tmp_path / "cot_export.parquet"
    pq.write_table(pa.table({"inputs": [r["instruction"] for r in rows], "targets": [r["reference_answer"] for r in rows],
                             "_task_name": ["stream_creak"] * 30, "_task_source": ["CoT"] * 30}), export)
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("".join(json.dumps({"inputs": r["instruction"], "targets": r["reference_answer"],
                                         "task_name": "stream_ecqa"}) + "\n" for r in rows[:5]), encoding="utf-8")
    out = tmp_path / "out"
    summary = convert_flan.convert([str(export), str(jsonl)], str(out), convert_flan.read_catalogue(CATALOGUE),
                                   subsets=("CoT",))
    assert summary["tasks"] == 2 and summary["written"] == 35  # same inputs under two tasks are kept apart
    assert pq.read_table(out / "CoT" / "stream_ecqa.parquet").num_rows == 5  # submix from the catalogue


def test_sampler_draws_per_task_from_the_converted_files(tmp_path):
    convert_flan.convert(TSVS, str(tmp_path), convert_flan.read_catalogue(CATALOGUE), subsets=("CoT",))
    src = SourceConfig(name="flan", format="flan", path=str(FLAN / "aqua_train.tsv"), quota=5,
                       task_path=str(tmp_path / "CoT" / "*.parquet"), per_task=3)
    sel = select([src], SamplingConfig(), seed=42, shard_size=64)
    tasks = [r["task"] for r in sel.rows]
    # aqua's task file repeats the main part's file: dedup leaves that task nothing new.
    assert len(sel.rows) == 5 + 5 * 3
    per_task = {t: tasks.count(t) for t in set(tasks) if t != "cot_aqua"}
    assert sorted(per_task) == ["cot_strategyqa", "stream_creak", "stream_ecqa", "stream_qasc",
                                "stream_sensemaking"] and set(per_task.values()) == {3}
    assert tasks.count("cot_aqua") == 5


def test_cli_summary_and_bad_input(tmp_path, capsys):
    assert convert_flan.main(["--out", str(tmp_path), "--catalogue", CATALOGUE, "--subsets", "CoT",
                              str(FLAN / "qasc_train.tsv")]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == 1
    bad = tmp_path / "bad_train.tsv"
    bad.write_text("only one field\n", encoding="utf-8")
    assert convert_flan.main(["--out", str(tmp_path), "--subsets", "CoT", str(bad)]) == 2
    assert "line 1: expected 3 tab-separated fields" in capsys.readouterr().err
    assert convert_flan.main(["--out", str(tmp_path), str(tmp_path / "nope.jsonl")]) == 2
