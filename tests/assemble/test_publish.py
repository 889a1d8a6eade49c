"""The published output: layout, loading with `datasets`, TRL's preference format, the
card, the report and its plots."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.assemble.config import PublishConfig
from tasks.assemble.publish import publish
from tasks.assemble.publish import truthfulqa_questions as read_questions
from tests.assemble.assemble_fixtures import realistic, truthfulqa_questions

DATA = Path(__file__).resolve().parents[2] / "data" / "sources"
CONFIG = {"name": "assemble-test", "seed": 42, "publish": PublishConfig().model_dump()}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    ins, comps, rates = realistic()
    cfg = PublishConfig(test_size=5, shard_rows=40)
    result = publish(ins, comps, rates, output=str(out), config=CONFIG, publish_cfg=cfg, seed=42,
                     truthful_questions=truthfulqa_questions())
    return out, result


def test_layout(published):
    out, result = published
    rel = sorted(f.path for f in result.files)
    assert "dataset/train-00000-of-00002.parquet" in rel and "dataset/train-00001-of-00002.parquet" in rel
    for path in ["README.md", "report/report.md", "report/leaderboard.png", "report/rating_distribution.png",
                 "report/correlation.png", "report/parse_failures.png", "report/cost.png",
                 "preferences/h4/train_prefs-00000-of-00001.parquet", "preferences/h4/test_prefs-00000-of-00001.parquet",
                 "preferences/h4/test_gen-00000-of-00001.parquet", "preferences/trl/train-00000-of-00001.parquet",
                 "dataset_ids/train-00000-of-00002.parquet",
                 "preferences/argilla/train-00000-of-00001.parquet", "preferences/all_pairs/test-00000-of-00001.parquet"]:
        assert path in rel and (out / path).exists(), path
    assert not list(out.rglob("*.tmp-*")), "temporary files left behind"
    meta = pq.read_schema(out / "preferences/h4/train_prefs-00000-of-00001.parquet").metadata
    assert meta[b"ultrafeedback.schema"] == b"preferences_h4"


def _load(out: Path, files: dict, cache: Path):
    from datasets import load_dataset

    return load_dataset("parquet", data_files={k: str(out / v) for k, v in files.items()}, cache_dir=str(cache))


def test_everything_loads_with_datasets(published, tmp_path):
    out, result = published
    full = _load(out, {"train": "dataset/*.parquet"}, tmp_path)["train"]
    assert full.num_rows == 45
    comp = full[0]["completions"][0]
    assert set(comp["annotations"]) == {"instruction_following", "honesty", "truthfulness", "helpfulness"}
    assert isinstance(comp["annotations"]["helpfulness"]["Rating"], (str, type(None)))
    ids = _load(out, {"train": "dataset_ids/*.parquet"}, tmp_path)["train"]
    assert ids.num_rows == 45 and [len(c) for c in ids["completion_indexes"]] == [len(c) for c in full["completions"]]
    long = _load(out, {"train": "dataset_long/*.parquet"}, tmp_path)["train"]
    assert long.num_rows == result.stats.totals["completions"] * 5
    h4 = _load(out, {"train_prefs": "preferences/h4/train_prefs-*.parquet",
                     "test_prefs": "preferences/h4/test_prefs-*.parquet"}, tmp_path)
    ps = result.pair_stats
    assert (h4["train_prefs"].num_rows, h4["test_prefs"].num_rows) == (ps["h4.rows_train_prefs"], ps["h4.rows_test_prefs"])
    assert ps["h4.rows_test_prefs"] == 5 and ps["dropped_truthful_qa_source"] == 10
    argilla = _load(out, {"train": "preferences/argilla/*.parquet"}, tmp_path)["train"]
    assert argilla.num_rows == ps["argilla.pairs"] > 0
    assert argilla.column_names == ["source", "prompt", "chosen", "chosen-rating", "chosen-model",
                                    "rejected", "rejected-rating", "rejected-model"]
    allp = _load(out, {"train": "preferences/all_pairs/train-*.parquet", "test": "preferences/all_pairs/test-*.parquet"},
                 tmp_path)
    assert allp["train"].num_rows + allp["test"].num_rows == ps["all_pairs.pairs"]


def _is_message_list(value, roles):
    return (isinstance(value, list) and [m["role"] for m in value] == roles
            and all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in value))


@pytest.mark.parametrize("files", [
    {"train": "preferences/trl/train-*.parquet"},
    {"train": "preferences/all_pairs/train-*.parquet"},
])
def test_pairs_are_in_trls_conversational_preference_format(published, tmp_path, files):
    """TRL's dataset-formats guide: a conversational preference example is
    {"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}],
     "rejected": [{"role": "assistant", ...}]}. Its DPOTrainer reads exactly prompt, chosen and
    rejected; other columns (prompt_id, scores, models) are ignored."""
    out, _ = published
    ds = next(iter(_load(out, files, tmp_path).values()))
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert "completion" not in ds.column_names and "label" not in ds.column_names
    for ex in ds:
        assert _is_message_list(ex["prompt"], ["user"])
        assert _is_message_list(ex["chosen"], ["assistant"]) and _is_message_list(ex["rejected"], ["assistant"])
        if "messages" in ex:
            assert ex["messages"] == ex["prompt"] + ex["chosen"]
        if "score_chosen" in ex:
            assert ex["score_chosen"] >= ex["score_rejected"]


def test_card_configs_and_loading_snippet_load(published, tmp_path):
    import yaml
    from datasets import load_dataset

    out, _ = published
    card = (out / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert [c["config_name"] for c in meta["configs"]] == ["default", "dataset_ids", "ratings_long", "h4", "argilla",
                                                           "trl", "all_pairs"]
    for config in meta["configs"]:
        files = {d["split"]: str(out / d["path"]) for d in config["data_files"]}
        ds = load_dataset("parquet", data_files=files, cache_dir=str(tmp_path))
        assert set(ds) == set(files) and all(ds[s].num_rows > 0 for s in ds)
    assert 'h4 = load_dataset("parquet", data_files={"train_prefs": "preferences/h4/train_prefs-*.parquet", ' \
           '"test_prefs": "preferences/h4/test_prefs-*.parquet", ' in card


def test_card_has_the_required_sections(published):
    out, result = published
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlicense: other\n")
    assert "config_name: h4" in card and "path: preferences/h4/train_prefs-*.parquet" in card
    for heading in ["## Sources and licences", "## Models", "## Principles", "## Ratings", "### Parse failures",
                    "## Cost", "## Preference pairs", "## What the openbmb layout leaves out", "## Schema",
                    "## Run configuration"]:
        assert heading in card, heading
    assert "CC BY-NC 4.0" in card and "Apache-2.0 (sylinrl/TruthfulQA)" in card and "MIT (thunlp/UltraChat)" in card
    assert "name: assemble-test" in card  # the run config
    assert "| truthful_qa | truthful_qa | 10 |" in card  # counts per source
    assert "`gpt-4`" in card  # the judge
    # Which score orders which set.
    pairs = card.split("## Preference pairs", 1)[1]
    assert "| `h4` | `overall_score`, the critique's 1-10 |" in pairs
    assert "| `argilla` | `fine-grained_score`, the mean of the aspect ratings" in pairs


def test_report_embeds_existing_plots(published):
    out, _ = published
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(images) == 5
    for img in images:
        data = (out / "report" / img).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_artifacts_are_skipped_outside_a_prefect_run(published):
    _, result = published
    assert result.artifacts == []


def test_rerun_with_fewer_rows_removes_stale_parts(tmp_path):
    ins, comps, rates = realistic(n_evol=20, n_ultrachat=0, n_tqa=0)
    cfg = PublishConfig(test_size=2, shard_rows=8, plots=False)
    publish(ins, comps, rates, output=str(tmp_path), config=CONFIG, publish_cfg=cfg, seed=1)
    assert len(list((tmp_path / "dataset").glob("*.parquet"))) == 3
    publish(ins, comps, rates, output=str(tmp_path), config=CONFIG,
            publish_cfg=PublishConfig(test_size=2, shard_rows=100, plots=False,
                                      pairs={k: v for k, v in PublishConfig().pairs.items() if k != "all_pairs"}),
            seed=1)
    assert [p.name for p in (tmp_path / "dataset").glob("*.parquet")] == ["train-00000-of-00001.parquet"]
    assert not list((tmp_path / "preferences" / "all_pairs").glob("*.parquet"))


def test_publish_to_an_fsspec_url():
    ins, comps, rates = realistic(n_evol=6, n_ultrachat=0, n_tqa=0)
    result = publish(ins, comps, rates, output="memory://assemble-test/run", config=CONFIG,
                     publish_cfg=PublishConfig(plots=False), seed=1)
    import fsspec

    fs = fsspec.filesystem("memory")
    assert fs.exists("/assemble-test/run/README.md")
    assert fs.exists("/assemble-test/run/preferences/h4/test_prefs-00000-of-00001.parquet")
    assert result.pair_stats["h4.rows_test_prefs"] == 1  # 20% of 6 prompts, rounded down


def test_truthfulqa_questions_file(tmp_path):
    questions = read_questions([str(DATA / "truthfulqa" / "TruthfulQA.csv")])
    assert len(questions) == 817
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no 'Question' column"):
        read_questions([str(bad)])


def test_run_without_completions_still_publishes_loadable_files(tmp_path):
    from datasets import load_dataset

    from storage.schemas import SCHEMAS

    ins, _, _ = realistic(n_evol=4, n_ultrachat=0, n_tqa=0)
    empty_c, empty_r = SCHEMAS["completions"].empty_table(), SCHEMAS["ratings"].empty_table()
    result = publish(ins, empty_c, empty_r, output=str(tmp_path), config=CONFIG, publish_cfg=PublishConfig(), seed=1,
                     notes=["this run is incomplete: 1 generate shard(s) are not finished"])
    assert result.pair_stats["h4.pairs"] == 0 and result.pair_stats["h4.prompts_with_fewer_than_two"] == 4
    full = load_dataset("parquet", data_files=str(tmp_path / "dataset/*.parquet"), cache_dir=str(tmp_path / "c"))
    assert full["train"].num_rows == 4 and full["train"][0]["completions"] == []
    # `datasets` cannot load an empty Parquet split, so empty splits get no file and the card
    # does not list them.
    assert not list((tmp_path / "preferences").rglob("*.parquet"))
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "> **Note:** this run is incomplete" in card
    assert "config_name: default" in card and "config_name: h4" not in card
    assert 'h4 = load_dataset' not in card
    assert all((tmp_path / "report" / f).stat().st_size > 1000 for f in
               ("leaderboard.png", "rating_distribution.png", "correlation.png", "parse_failures.png", "cost.png"))
