"""The dataset card: README.md at the root of a run's output.

Inputs: the run config (as a plain dict), `RunStats`, the pair statistics, the output
file list, the judge models seen and, optionally, the judge audit's section. Output: Markdown
with a Hugging Face front matter whose `configs` point at the Parquet files, so the
folder loads as a dataset once uploaded, plus the figures a user needs to judge the run:
counts per source, model and principle, rating distributions, parse failures, cost, the
pairs and what was left out of them, the schemas and the licences of the sources.
"""
from __future__ import annotations

from fnmatch import fnmatch

import pandas as pd
import pyarrow as pa
import yaml

from storage.schemas import SCHEMAS
from tasks.assemble.config import LAYOUT_SCHEMA, LAYOUT_SPLITS, default_pairs
from tasks.assemble.stats import RunStats
from tasks.markdown import kv, table

# Licences of the upstream sources, by adapter; a generic file format says nothing about
# its content, so the user must state it.
LICENCES = {
    "truthful_qa": "Apache-2.0 (sylinrl/TruthfulQA)",
    "flan": "Apache-2.0 (google-research/FLAN)",
    "ultrachat": "MIT (thunlp/UltraChat)",
    "sharegpt": "no clear licence (user conversations shared on ShareGPT)",
    "evol_instruct": "CC BY-NC 4.0, non-commercial (nlpxucan/WizardLM)",
    "false_qa": "no licence in its repository (thunlp/FalseQA)",
}
UNKNOWN_LICENCE = "unknown: state the licence of your file"

SUBSETS = [  # (config name, [(split, glob)], schema); the pair sets follow (pair_subsets)
    ("default", [("train", "dataset/*.parquet")], "dataset"),
    ("dataset_ids", [("train", "dataset_ids/*.parquet")], "dataset_ids"),
    ("ratings_long", [("train", "dataset_long/*.parquet")], "ratings_long"),
]


def _batch_spend(stats, config: dict) -> list[str]:
    """The card's sentence for a judge that ran through a provider's Batch API: what was paid
    (the rate line) against the same tokens at the list price of `rating.prices` (the run
    config as plain data: assemble reads the config and the shards, nothing of rating)."""
    rating = config.get("rating") or {}
    ep = next((e for e in rating.get("endpoints", []) if e.get("name") == rating.get("judge")), None)
    rate = stats.cost[stats.cost["stage"] == "rate"].to_dict("records")
    if not ep or ep.get("mode") != "batch" or not rate:
        return []
    price, paid = (rating.get("prices") or {}).get(ep.get("model")), rate[0].get("usd")
    if price is None or paid is None:
        return [f"\nThe judge ran through the provider's Batch API (`{ep.get('model')}` is unpriced).\n"]
    listed = (int(rate[0].get("prompt_tokens") or 0) * price["input_per_1m"]
              + int(rate[0].get("completion_tokens") or 0) * price["output_per_1m"]) / 1e6
    return [f"\nThe judge ran through the provider's Batch API: {paid:.4f} USD paid, {listed:.4f} USD at the "
            f"realtime (list) price of the same tokens.\n"]


def _pair_sets(config: dict) -> dict[str, dict]:
    pairs = (config.get("publish") or {}).get("pairs")
    if pairs is None:
        pairs = {name: ps.model_dump() for name, ps in default_pairs().items()}
    return pairs


def pair_subsets(config: dict) -> list[tuple[str, list[tuple[str, str]], str]]:
    """Every pair set as a card config: `publish.pairs` by layout, and the `publish.pair_rules`
    sets (tulu3, delta, on-policy), each one train split."""
    sets = [(name, [(split, f"preferences/{name}/{split}-*.parquet") for split in LAYOUT_SPLITS[ps["layout"]]],
             LAYOUT_SCHEMA[ps["layout"]]) for name, ps in _pair_sets(config).items()]
    rules = (config.get("publish") or {}).get("pair_rules") or []
    return sets + [(rs["name"], [("train", f"preferences/{rs['name']}/train-*.parquet")], "preferences_rules")
                   for rs in rules]


def present_subsets(files: list[str], config: dict | None = None) -> list[tuple[str, list[tuple[str, str]], str]]:
    """The card's configs (dataset, sidecars, pair sets) reduced to the splits that have files."""
    out = []
    for name, splits, schema_name in SUBSETS + pair_subsets(config or {}):
        kept = [(s, p) for s, p in splits if any(fnmatch(f, p) for f in files)]
        if kept:
            out.append((name, kept, schema_name))
    return out


def front_matter(licences: list[str], subsets: list) -> str:
    configs = [{"config_name": name, "data_files": [{"split": s, "path": p} for s, p in splits]}
               for name, splits, _ in subsets]
    meta = {
        "license": "other",
        "pretty_name": "UltraFeedback-style AI feedback",
        "tags": ["ultrafeedback", "preference", "dpo", "ai-feedback"],
        "task_categories": ["text-generation"],
        "configs": configs,
    }
    note = "# licences of the sources: " + "; ".join(sorted(set(licences))) if licences else ""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + (note + "\n" if note else "") + "---\n"


def _type(t: pa.DataType) -> str:
    if pa.types.is_struct(t):
        return "struct"
    if pa.types.is_list(t) and pa.types.is_struct(t.value_type):
        return "list<struct>"
    return str(t).replace("<item: ", "<").replace("element: ", "")


def _flatten(name: str, t: pa.DataType, nullable: bool) -> list[tuple[str, str, bool]]:
    """Nested columns as dotted rows (`completions[].annotations.honesty.Rating`)."""
    rows = [(name, _type(t), nullable)]
    inner, prefix = (t.value_type, f"{name}[]") if pa.types.is_list(t) else (t, name)
    if pa.types.is_struct(inner):
        for f in inner:
            rows += _flatten(f"{prefix}.{f.name}", f.type, f.nullable)
    return rows


def schema_section(subsets: list) -> str:
    parts = []
    for name, splits, schema_name in subsets:
        schema = SCHEMAS[schema_name]
        flat = [r for f in schema for r in _flatten(f.name, f.type, f.nullable)]
        rows = pd.DataFrame({"column": [r[0] for r in flat], "type": [r[1] for r in flat],
                             "nullable": ["yes" if r[2] else "no" for r in flat]})
        files = ", ".join(f"`{p}` ({s})" for s, p in splits)
        parts.append(f"### {name}\n\nFiles: {files}. Schema `{schema_name}`.\n\n{table(rows)}")
    return "\n\n".join(parts)


def sources_table(stats: RunStats) -> pd.DataFrame:
    src = stats.sources.copy()
    src["licence"] = [LICENCES.get(f, UNKNOWN_LICENCE) for f in src["source_format"]]
    return src


RULE_TEXT = {
    "best_vs_random": "chosen = the best-scored completion (the first on ties), rejected = a seeded random one "
                      "of the others, so ties are kept (HuggingFaceH4's rule)",
    "best_vs_lower": "chosen = the best-scored completion, rejected = a seeded random one scored strictly lower; "
                     "prompts whose scored completions all tie are dropped (Argilla's rule)",
    "all_pairs": "every pair of completions with a strict score difference",
}
SCORE_TEXT = {
    "overall": "`overall_score`, the critique's 1-10",
    "fine_grained": "`fine-grained_score`, the mean of the aspect ratings that are not N/A (1-5)",
}
LAYOUT_TEXT = {
    "h4": "HuggingFaceH4/ultrafeedback_binarized's columns and six splits (prompt a string, chosen/rejected = "
          "[user turn, assistant turn], messages = chosen, in *_gen the user turn only)",
    "argilla": "argilla/ultrafeedback-binarized-preferences-cleaned's columns (chosen-rating, chosen-model, ...), "
               "one train split",
    "trl": "TRL's explicit-prompt conversational format (prompt = [user turn], chosen/rejected = [assistant turn]), "
           "train/test",
}


def _pairs_section(pair_stats: dict, config: dict) -> str:
    sets = _pair_sets(config)
    rows = pd.DataFrame([{
        "set": f"`{name}`", "score": SCORE_TEXT.get(ps["score"], f"the `{ps['score']}` rating (1-5)"),
        "rule": RULE_TEXT.get(ps["rule"], f"rule `{ps['rule']}`"), "layout": LAYOUT_TEXT[ps["layout"]],
        "pairs": pair_stats.get(f"{name}.pairs", 0), "ties kept": pair_stats.get(f"{name}.ties", 0),
        "prompts without a pair": pair_stats.get(f"{name}.prompts_without_pair", 0)
        + pair_stats.get(f"{name}.prompts_with_fewer_than_two", 0),
        "completions without this score": pair_stats.get(f"{name}.completions_without_score", 0),
    } for name, ps in sets.items()])
    left_out = {
        "prompts from the truthful_qa source": pair_stats.get("dropped_truthful_qa_source", 0),
        "prompts equal to a TruthfulQA question": pair_stats.get("dropped_truthful_qa_question", 0),
        "completions without a response": pair_stats.get("completions_without_response", 0),
    }
    splits = {f"{name} {k.removeprefix(name + '.rows_')}": v for name in sets for k, v in pair_stats.items()
              if k.startswith(f"{name}.rows_")}
    return ("Every pair set comes from the same completions and ratings; each is ordered by its own score "
            "(`publish.pairs`), so the sets differ. H4 ranks by the critique's overall score (1-10) as "
            "HuggingFaceH4 does, Argilla by the mean aspect rating as Argilla does; the two scores can disagree "
            "on which completion is best and on what is a tie. The test prompts "
            f"({pair_stats.get('test_prompts', 0):,}) are drawn once and are the same in every set with a test "
            "split; argilla, like Argilla's release, has only a train split and includes them. "
            "In h4, test_sft and test_gen are the two halves of test_prefs; the train splits hold the same pairs.\n\n"
            f"{table(rows)}\n\nRows per split:\n\n{kv(splits)}\n\n"
            f"Left out of every set (they stay in the full dataset):\n\n{kv(left_out)}")


LOSSY = """\
`default` has exactly openbmb/UltraFeedback's features, so code written for that release (and
`concatenate_datasets` with it) works unchanged. Where that layout cannot say what this run knows:

- A rating the judge's answer did not yield is a null `Rating` (the original left the aspect out
  after its retries); `dataset_long` has its `parse_status` and `parse_reason` for every
  (completion, aspect), and the raw judge answers stay in the run's rating shards.
- A "no type applies" answer is `Type: ["None"]`, as the original wrote "None" in a list column.
- `correct_answers` / `incorrect_answers` are `["None"]` where a source has none; for FLAN rows
  `correct_answers` holds the FLAN reference (target or rationale), the one the judge was shown.
- `prompt_id` (sha256 of the instruction, H4's id), the source file and row, and the ids of the
  generation requests are in `dataset_ids`, one row per dataset row in the same order.
"""


def loading_snippet(subsets: list) -> str:
    lines = ["```python", "from datasets import load_dataset"]
    for name, splits, _ in subsets:
        if name in ("default", "h4"):
            files = ", ".join(f'"{s}": "{p}"' for s, p in splits)
            lines.append(f'{"full" if name == "default" else name} = load_dataset("parquet", data_files={{{files}}})')
    return "\n".join(lines + ["```\n"])


def render_card(config: dict, stats: RunStats, pair_stats: dict, judges: list[str],
                files: list[str] | None = None, notes: list[str] | None = None, audit: str | None = None) -> str:
    subsets = present_subsets(files or [], config)
    src = sources_table(stats)
    name = config.get("name", "ultrafeedback")
    totals = stats.totals
    lines = [
        front_matter(list(src["licence"]), subsets),
        f"# {name}: an UltraFeedback-style AI-feedback dataset\n",
        f"{totals.get('instructions', 0):,} instructions from {len(src)} sources, "
        f"{totals.get('completions', 0):,} completions by {len(stats.models)} models, "
        f"{totals.get('ratings', 0):,} aspect ratings and {totals.get('critiques', 0):,} critiques "
        f"by the judge{'s' if len(judges) > 1 else ''} {', '.join(f'`{j}`' for j in judges) or '(none)'}.",
        "Built with the UltraFeedback method (Cui et al., 2023): each instruction is answered by several "
        "models under sampled principles, and a judge rates every answer on instruction following, "
        "honesty, truthfulness and helpfulness (1-5) and writes a critique with an overall score (1-10).\n",
        *[f"> **Note:** {n}\n" for n in notes or []],
        "## Loading\n",
        loading_snippet(subsets),
        "The `trl` pair files can be given to TRL's `DPOTrainer` as they are; `h4` and `argilla` have the "
        "columns of the releases they are named after. A split without rows has no file and is not listed.\n",
        "## Sources and licences\n", table(src),
        "\nA dataset inherits the terms of its sources: a non-commercial source makes the whole dataset "
        "non-commercial.\n",
        "## Models\n", table(stats.models), "\n## Principles\n", table(stats.principles),
        "\n## Ratings\n", "Count of each rating per aspect (\"no rating\": unreadable, failed or never rated).\n",
        table(stats.ratings), "\n### Parse failures\n", table(stats.parse),
        "\n### Aspect correlation\n", table(stats.correlation),
        "\n## Cost\n", "Calls: generation requests, and judge calls (one per instruction and aspect, one per critique). "
        "Judge tokens and dollars are counted once per call, re-asks included.\n", table(stats.cost),
        *_batch_spend(stats, config),
        "\n## What the openbmb layout leaves out\n", LOSSY,
        "\n## Preference pairs\n", _pairs_section(pair_stats, config),
    ]
    if audit:  # the judge audit's own section (rendered by tasks.audit.report from its shards)
        lines += ["", audit]
    lines += [
        "\n## Quality report\n", "Plots and tables: [report/report.md](report/report.md).\n",
        "## Schema\n", schema_section(subsets),
        "\n## Run configuration\n", "```yaml\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True) + "```\n",
    ]
    return "\n".join(lines)
