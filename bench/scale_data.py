"""The scale benchmark's instruction set: numbered variants of the bundled real rows.

Inputs: the bundled source samples under data/sources (about 2,900 usable instructions)
and a target size N. Outputs: a folder with one file per source family, in that source's
own format (so the real adapters, filters and principle rows apply), and the per-source
quotas that add up to exactly N, plus a run config (YAML) for scripted or HTTP backends.

The expansion is deterministic and documented in docs/benchmarks.md:
1. The bundled samples go through the real sampling logic (`tasks.sources.sampling.select`
   with every quota 'all', the shipped filters and 13-gram decontamination against
   TruthfulQA), so only rows the pipeline would accept are expanded.
2. N is split over the families in the proportions of the original release (Evol-Instruct
   10,000, UltraChat 9,929, ShareGPT 19,949, FLAN 20,939, TruthfulQA 811, FalseQA 2,339:
   63,967). FalseQA is not bundled (no licence), so its share goes to ShareGPT; TruthfulQA
   is never expanded (its real 817 rows are the source, at most 811 drawn).
3. Row i of a family's file is its usable row `i mod m` (m usable rows, in file order);
   copy v = i div m keeps the text for v = 0 and appends " (variant v)" otherwise. Every
   other field of the record is copied unchanged.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "sources"
ORIGINAL = {"evol_instruct": 10_000, "ultrachat": 9_929, "sharegpt": 19_949 + 2_339, "flan": 20_939, "truthful_qa": 811}
FULL = sum(ORIGINAL.values())  # 63,967
TRUTHFUL = DATA / "truthfulqa" / "TruthfulQA.csv"
BUNDLED = {
    "truthful_qa": ("truthful_qa", str(TRUTHFUL)),
    "sharegpt": ("sharegpt", str(DATA / "sharegpt" / "ShareGPT_V3_filtered_500.json")),
    "ultrachat": ("ultrachat", str(DATA / "ultrachat" / "ultra_eval.json")),
    "evol_instruct": ("evol_instruct", str(DATA / "evol_instruct" / "WizardLM_testset.jsonl")),
    "flan": ("flan", str(DATA / "flan" / "*_train.tsv")),
}
SAMPLING = {"max_chars": 4000, "decontamination": {"ngram": 13, "eval_files": [
    {"path": str(TRUTHFUL), "format": "truthful_qa"}]}}


def quotas(n: int) -> dict[str, int]:
    """Rows per family for N instructions, in the original's proportions, summing to N."""
    if n < len(ORIGINAL):
        raise ValueError(f"size {n}: need at least {len(ORIGINAL)} instructions")
    out = {k: max(1, math.floor(v * n / FULL)) for k, v in ORIGINAL.items()}
    out["truthful_qa"] = min(out["truthful_qa"], ORIGINAL["truthful_qa"])
    out["sharegpt"] += n - sum(out.values())
    return out


def variant(text: str, v: int) -> str:
    return text if v == 0 else f"{text} (variant {v})"


def usable_rows() -> dict[str, list[dict]]:
    """The bundled rows the real sampling logic accepts, per family, in file order."""
    from tasks.sources.config import SamplingConfig, SourceConfig
    from tasks.sources.sampling import select

    sources = [SourceConfig(name=k, format=f, path=p, quota="all") for k, (f, p) in BUNDLED.items()]
    sel = select(sources, SamplingConfig.model_validate(SAMPLING), seed=0, shard_size=10_000)
    out: dict[str, list[dict]] = defaultdict(list)
    for row in sel.rows:
        out[row["source"]].append(row)
    for rows in out.values():
        rows.sort(key=lambda r: (r["source_file"], r["source_row"]))
    return dict(out)


def _json_records(path: str) -> dict[int, object]:
    from tasks.sources.io import read_json_records

    return dict(read_json_records(path))


def _with_text(family: str, rec: dict, text: str, v: int) -> dict:
    rec = json.loads(json.dumps(rec))  # a deep copy: the base record is reused for every variant
    if family == "evol_instruct":
        rec["instruction" if "instruction" in rec else "Instruction"] = text
    elif family == "ultrachat":
        rec["data"] = text
    elif family == "sharegpt":
        turn = next(t for t in rec["conversations"] if t.get("from") in ("human", "user"))
        turn["value"] = text
        if v:
            rec["id"] = f"{rec.get('id')}-v{v}"
    return rec


def _write_json_family(family: str, base: list[dict], count: int, dest: Path) -> list[str]:
    src = BUNDLED[family][1]
    records = _json_records(src)
    path = dest / f"{family}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(count):
            row = base[i % len(base)]
            v = i // len(base)
            rec = _with_text(family, records[row["source_row"]], variant(row["instruction"], v), v)
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return [str(path)]


def _write_flan(base: list[dict], count: int, dest: Path) -> list[str]:
    """FLAN CoT TSVs keep their file names (the task name comes from them)."""
    lines = {}
    for path in sorted((DATA / "flan").glob("*_train.tsv")):
        lines[path.name] = path.read_text(encoding="utf-8").splitlines()
    folder = dest / "flan"
    folder.mkdir(exist_ok=True)
    out: dict[str, list[str]] = defaultdict(list)
    for i in range(count):
        row = base[i % len(base)]
        question, answer, rationale = lines[row["source_file"]][row["source_row"] - 1].split("\t")
        out[row["source_file"]].append("\t".join([variant(question, i // len(base)), answer, rationale]))
    files = []
    for name, rows in sorted(out.items()):
        (folder / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
        files.append(str(folder / name))
    return files


def build(n: int, dest: Path) -> dict[str, dict]:
    """Write the expanded sources for N instructions; returns {family: {format, path, quota}}."""
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / "sources.json"
    if marker.exists():
        return json.loads(marker.read_text())
    want = quotas(n)
    base = usable_rows()
    sources: dict[str, dict] = {}
    for family, quota in want.items():
        fmt = BUNDLED[family][0]
        if family == "truthful_qa":
            if quota > len(base[family]):
                raise ValueError(f"truthful_qa: {quota} asked, {len(base[family])} usable")
            sources[family] = {"format": fmt, "path": str(TRUTHFUL), "quota": quota}
            continue
        if family == "flan":
            paths = _write_flan(base[family], quota, dest)
            sources[family] = {"format": fmt, "path": str(dest / "flan" / "*_train.tsv"), "quota": quota,
                               "files": paths}
        else:
            paths = _write_json_family(family, base[family], quota, dest)
            sources[family] = {"format": fmt, "path": paths[0], "quota": quota}
        sources[family]["base_rows"] = len(base[family])
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(sources, indent=1))
    os.replace(tmp, marker)
    return sources


def config(n: int, sources: dict[str, dict], output: str, judge: str = "scripted", judge_url: str | None = None,
           shard_size: int = 1000, plots: bool = True) -> dict:
    """The run config of one benchmark run (scripted generation; scripted or HTTP judge)."""
    if judge == "http":
        endpoint = {"name": "bench", "kind": "openai_compatible", "model": "judge", "base_url": judge_url,
                    "answer_mode": "text", "max_concurrency": 64, "timeout_s": 60, "max_rate_limit_wait_s": 120}
    else:
        endpoint = {"name": "scripted", "kind": "scripted", "model": "scripted-judge"}
    return {
        "name": f"scale-{n}-{judge}", "output": output, "seed": 42, "shard_size": shard_size,
        "sources": [{"name": k, "format": v["format"], "path": v["path"], "quota": v["quota"]} for k, v in sources.items()],
        "sampling": SAMPLING,
        "generation": {"k": 4, "models": [{"name": f"scripted-{m}", "serve": "scripted"}
                                          for m in ("alpha", "beta", "gamma", "delta")]},
        "rating": {"endpoints": [endpoint], "judge": endpoint["name"]},
        "publish": {"plots": plots},
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path
