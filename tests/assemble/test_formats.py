"""Our outputs against the reference releases: openbmb/UltraFeedback, HuggingFaceH4/
ultrafeedback_binarized and argilla/ultrafeedback-binarized-preferences-cleaned.

The reference features are the releases' own (tests/fixtures/formats, see its README); each
output is loaded with `datasets` and its features compared by name and type. A real H4 row
must concatenate with our h4 split, and the alignment-handbook's way of reading H4 pairs
must work on our files.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.assemble.config import PublishConfig
from tasks.assemble.publish import publish
from tests.assemble.assemble_fixtures import realistic, truthfulqa_questions

FORMATS = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
H4_SPLITS = ["train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen"]


def to_feature(field: dict):
    """One field of a card's features YAML (as JSON) as a `datasets` feature."""
    from datasets import List, Value

    if "dtype" in field:
        return Value(field["dtype"])
    if "sequence" in field:
        return List(Value(field["sequence"]))
    if "list" in field:
        return List({f["name"]: to_feature(f) for f in field["list"]})
    if "struct" in field:
        return {f["name"]: to_feature(f) for f in field["struct"]}
    raise ValueError(f"unknown feature {field}")


def reference(name: str):
    from datasets import Features

    spec = json.loads((FORMATS / f"{name}.features.json").read_text(encoding="utf-8"))
    return Features({f["name"]: to_feature(f) for f in spec["features"]})


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    publish(*realistic(n_evol=30, n_ultrachat=20, n_tqa=5), output=str(root), config={"name": "formats-test"},
            publish_cfg=PublishConfig(test_size=10, plots=False), seed=42, truthful_questions=truthfulqa_questions())
    return root


def load(root: Path, files: dict, cache: Path):
    from datasets import load_dataset

    return load_dataset("parquet", data_files={k: str(root / v) for k, v in files.items()}, cache_dir=str(cache))


def test_dataset_has_openbmbs_features(out, tmp_path):
    ds = load(out, {"train": "dataset/*.parquet"}, tmp_path)["train"]
    assert ds.features == reference("openbmb_ultrafeedback")
    assert set(ds.column_names) == {"source", "instruction", "models", "completions", "correct_answers",
                                    "incorrect_answers"}


def test_h4_has_h4s_features_and_six_splits_in_h4s_proportions(out, tmp_path):
    h4 = load(out, {s: f"preferences/h4/{s}-*.parquet" for s in H4_SPLITS}, tmp_path)
    want = reference("h4_ultrafeedback_binarized")
    for split in H4_SPLITS:
        assert h4[split].features == want, split
    n = {s: h4[s].num_rows for s in H4_SPLITS}
    assert n["train_prefs"] == n["train_sft"] == n["train_gen"] > 0
    assert n["test_prefs"] == n["test_sft"] + n["test_gen"] and abs(n["test_sft"] - n["test_gen"]) <= 1
    assert n["test_prefs"] == 10
    assert set(h4["test_prefs"]["prompt_id"]).isdisjoint(h4["train_prefs"]["prompt_id"])
    real = json.loads((FORMATS / "h4_ultrafeedback_binarized.splits.json").read_text())["splits"]
    assert [s["name"] for s in real] and {s["name"] for s in real} == set(H4_SPLITS)


def test_argilla_has_argillas_features(out, tmp_path):
    ds = load(out, {"train": "preferences/argilla/train-*.parquet"}, tmp_path)["train"]
    assert ds.features == reference("argilla_ultrafeedback_cleaned")
    assert all(r > s for r, s in zip(ds["chosen-rating"], ds["rejected-rating"]))
    assert "truthful_qa" not in set(ds["source"])


def test_a_real_h4_row_concatenates_with_our_h4_split(out, tmp_path):
    from datasets import concatenate_datasets, load_dataset

    ours = load(out, {"train_prefs": "preferences/h4/train_prefs-*.parquet"}, tmp_path)["train_prefs"]
    real = load_dataset("json", data_files=str(FORMATS / "h4_ultrafeedback_binarized.jsonl"),
                        cache_dir=str(tmp_path))["train"]
    both = concatenate_datasets([ours, real])
    assert both.num_rows == ours.num_rows + 2 and both.features == ours.features
    last = both[-2]
    assert last["score_chosen"] == last["score_rejected"] == 8.5  # the real row's tie survives the concat


def test_handbook_style_consumer_code_runs_on_our_h4_files(out, tmp_path):
    """alignment-handbook's DPO preprocessing of H4: prompt = chosen[:-1], answers =
    chosen[-1:] / rejected[-1:], each rendered with the chat template."""
    h4 = load(out, {"train_prefs": "preferences/h4/train_prefs-*.parquet",
                    "test_gen": "preferences/h4/test_gen-*.parquet"}, tmp_path)

    def render(messages):
        return "".join(f"<|{m['role']}|>\n{m['content']}</s>\n" for m in messages)

    def to_dpo(example):
        prompt, chosen, rejected = example["chosen"][:-1], example["chosen"][-1:], example["rejected"][-1:]
        return {"text_prompt": render(prompt), "text_chosen": render(chosen), "text_rejected": render(rejected)}

    mapped = h4["train_prefs"].map(to_dpo)
    for ex, orig in zip(mapped, h4["train_prefs"]):
        assert ex["text_prompt"] == f"<|user|>\n{orig['prompt']}</s>\n"
        assert ex["text_chosen"].startswith("<|assistant|>\n") and ex["text_rejected"].startswith("<|assistant|>\n")
        assert orig["chosen"][-1]["content"] != orig["rejected"][-1]["content"] or \
            orig["score_chosen"] == orig["score_rejected"]
        assert orig["score_chosen"] >= orig["score_rejected"]
    # SFT/generation recipes read `messages`: in *_gen it is the prompt alone.
    for ex in h4["test_gen"]:
        assert ex["messages"] == ex["chosen"][:-1]
