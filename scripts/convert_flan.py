"""Convert the FLAN collection into the per-task layout the sampler reads.

Usage:
    python scripts/convert_flan.py --out data/full/flan/tasks \
        --catalogue data/sources/flan/flan_collection_info.csv  FILE_OR_GLOB ...

Inputs (any mix):
- the collection's chain-of-thought TSVs (google-research/FLAN flan/v2/cot_data/*_train.tsv:
  question, answer, rationale, no header, newlines escaped as `\\n`);
- exports of the collection's mixtures as records (JSONL, JSONL.GZ, JSON or Parquet) with
  `inputs` and `targets`, the task in `task_name`, `_task_name` or `task`, and the submix in
  `task_source` or `_task_source` (the column names of the public exports, e.g.
  Open-Orca/FLAN's parquet); a record without a submix takes it from the catalogue
  (flan_collection_info.csv: Source per Dataset) or from its file name (flan, t0, niv2, cot).

Output: one Parquet file per task, `<out>/<submix>/<task>.parquet`, columns task, inputs,
targets (strings), which `sources[].task_path` of format flan reads (`per_task` rows are
then drawn from each task). Only the submixes in `--subsets` are written; the original drew
its per-task part from Flan2021, T0 and NIv2 (its CoT part came from the TSVs directly, as
`sources[].path`). Rows without inputs, repeated (task, inputs) pairs and rows longer than
`--max-chars` are dropped and counted. Prints one JSON summary line.
"""
from __future__ import annotations

import argparse
import csv
import glob
import gzip
import io
import json
import os
import re
import sys
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([pa.field("task", pa.string(), nullable=False), pa.field("inputs", pa.string(), nullable=False),
                    pa.field("targets", pa.string(), nullable=False)])
# The catalogue's Source labels, as submix folder names.
SUBMIX = {"FLAN": "Flan2021", "FLAN/T0": "Flan2021", "Flan2021": "Flan2021", "T0": "T0", "NIv2": "NIv2",
          "CoT": "CoT", "Dialog": "Dialog", "Program Synthesis": "ProgramSynthesis"}
FILE_HINTS = (("niv2", "NIv2"), ("t0", "T0"), ("cot", "CoT"), ("dialog", "Dialog"), ("flan", "Flan2021"))
DEFAULT_SUBSETS = ("Flan2021", "T0", "NIv2")


def read_catalogue(path: str | None) -> dict[str, str]:
    """Dataset name -> submix, from flan_collection_info.csv."""
    if not path:
        return {}
    with open(path, encoding="utf-8", newline="") as fh:
        return {r["Dataset"].strip(): SUBMIX.get(r["Source"].strip(), r["Source"].strip())
                for r in csv.DictReader(fh)}


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def cot_rows(path: str, catalogue: dict[str, str]):
    """Rows of a CoT TSV, named as the catalogue names the task (aqua -> stream_aqua)."""
    stem = os.path.basename(path).split(".")[0].removesuffix("_train")
    task = next((n for n in (f"cot_{stem}", f"stream_{stem}", stem) if n in catalogue), f"cot_{stem}")
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for line_no, line in enumerate(lines, 1):
        if line.strip():
            fields = line.split("\t")
            if len(fields) != 3:
                raise ValueError(f"{path}: line {line_no}: expected 3 tab-separated fields, got {len(fields)}")
            question, answer, rationale = (_unescape(f).strip() for f in fields)
            yield "CoT", task, question, f"{rationale}\nSo the answer is {answer}."


def _records(path: str):
    if path.endswith(".parquet"):
        yield from pq.read_table(path).to_pylist()
        return
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    if text.lstrip().startswith("["):
        yield from json.loads(text)
        return
    for line in io.StringIO(text):
        if line.strip():
            yield json.loads(line)


def record_rows(path: str, catalogue: dict[str, str]):
    hint = next((s for key, s in FILE_HINTS if key in os.path.basename(path).lower()), None)
    for i, rec in enumerate(_records(path)):
        task = rec.get("task_name") or rec.get("_task_name") or rec.get("task")
        if not task or "inputs" not in rec or "targets" not in rec:
            raise ValueError(f"{path}: record {i}: needs inputs, targets and a task name (task_name/_task_name/task)")
        source = rec.get("task_source") or rec.get("_task_source")
        submix = SUBMIX.get(source, source) if source else catalogue.get(str(task), hint or "unknown")
        yield submix, str(task), str(rec["inputs"] or "").strip(), str(rec["targets"] or "").strip()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "task"


def convert(inputs: list[str], out: str, catalogue: dict[str, str], subsets=DEFAULT_SUBSETS,
            max_chars: int | None = None) -> dict:
    """Read every input, keep the subsets, write one Parquet file per task; the counts."""
    counts: Counter = Counter()
    tasks: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for path in inputs:
        rows = cot_rows(path, catalogue) if path.endswith(".tsv") else record_rows(path, catalogue)
        for submix, task, inputs_text, targets in rows:
            counts["read"] += 1
            if submix not in subsets:
                counts[f"skipped_{submix}"] += 1
            elif not inputs_text:
                counts["empty"] += 1
            elif max_chars and len(inputs_text) > max_chars:
                counts["too_long"] += 1
            elif (task, inputs_text) in seen:
                counts["duplicate"] += 1
            else:
                seen.add((task, inputs_text))
                tasks[(submix, task)].append((inputs_text, targets))
    for (submix, task), rows in sorted(tasks.items()):
        os.makedirs(os.path.join(out, submix), exist_ok=True)
        table = pa.table({"task": [task] * len(rows), "inputs": [r[0] for r in rows],
                          "targets": [r[1] for r in rows]}, schema=SCHEMA)
        pq.write_table(table, os.path.join(out, submix, f"{_safe(task)}.parquet"))
        counts["written"] += len(rows)
    by_submix = Counter(s for s, _ in tasks)
    return {"tasks": len(tasks), "tasks_per_submix": dict(sorted(by_submix.items())), **dict(sorted(counts.items()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="FLAN files or globs (TSV, JSONL[.GZ], JSON, Parquet)")
    p.add_argument("--out", required=True, help="output folder (one Parquet file per task)")
    p.add_argument("--catalogue", help="flan_collection_info.csv (task -> submix)")
    p.add_argument("--subsets", default=",".join(DEFAULT_SUBSETS),
                   help=f"submixes to keep (default {','.join(DEFAULT_SUBSETS)}; also CoT, Dialog)")
    p.add_argument("--max-chars", type=int, default=None, help="drop inputs longer than this")
    args = p.parse_args(argv)
    files = [f for spec in args.inputs for f in (sorted(glob.glob(spec)) or [spec])]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        print(f"convert_flan: not found: {missing}", file=sys.stderr)
        return 2
    try:
        summary = convert(files, args.out, read_catalogue(args.catalogue),
                          tuple(s.strip() for s in args.subsets.split(",") if s.strip()), args.max_chars)
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        print(f"convert_flan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
