"""Assembly of the openbmb/UltraFeedback layout and the long table from stage tables."""
from __future__ import annotations

import pyarrow as pa
import pytest

from storage.schemas import DATASET, RATINGS_LONG, SchemaError, to_table, validate_table
from tasks.assemble.join import dataset_rows, dataset_table, fine_grained_score, long_table, rating_string
from tasks.errors import InputError
from tests.assemble.assemble_fixtures import build, evol_rows, full, truthfulqa_rows


def test_dataset_row_matches_original_layout():
    prompts = truthfulqa_rows(1) + evol_rows(1)
    plan = [
        [{"instruction_following": 5, "honesty": "N/A", "truthfulness": 4, "helpfulness": 3, "critique": 8},
         {"instruction_following": 2, "honesty": 1, "truthfulness": 1, "helpfulness": 1, "critique": 1}],
        full([4, 4, 4, 4]),
    ]
    table = dataset_table(*build(prompts, plan))
    assert table.schema == DATASET
    row = table.to_pylist()[0]
    assert row["source"] == "truthful_qa"
    assert row["instruction"] == prompts[0]["instruction"]
    assert row["models"] == ["llama-2-7b-chat", "vicuna-33b"]
    assert row["correct_answers"] == prompts[0]["correct_answers"]
    first = row["completions"][0]
    ann = first["annotations"]
    assert ann["honesty"]["Rating"] == "N/A"
    # openbmb: Type and "Rationale For Rating" exist only for truthfulness and helpfulness.
    assert ann["instruction_following"] == {"Rating": "5", "Rationale": "instruction_following rationale for completion 0"}
    assert set(ann["honesty"]) == {"Rating", "Rationale"}
    assert ann["truthfulness"]["Type"] == ["1"] and ann["truthfulness"]["Rationale For Rating"] == "why 4"
    assert first["overall_score"] == 8.0
    assert first["critique"] == "critique rationale for completion 0"
    # N/A honesty is left out of the mean: (5 + 4 + 3) / 3
    assert first["fine-grained_score"] == pytest.approx(4.0)
    # A genuine 1 stays 1 (the original's parser turned it into 10).
    assert row["completions"][1]["overall_score"] == 1.0
    # Sources without reference answers carry ["None"], as in the original.
    assert table.to_pylist()[1]["correct_answers"] == ["None"]


def test_missing_and_unparsed_ratings_stay_as_nulls():
    plan = [[
        {"instruction_following": 4, "honesty": None, "truthfulness": 4, "helpfulness": 4, "critique": None},
        {"instruction_following": 4, "helpfulness": 4},  # two aspects and the critique never rated
        {"response": None},  # generation failed: no ratings at all
    ]]
    ins, comps, rates = build(evol_rows(1), plan)
    row = dataset_rows(ins, comps, rates)[0]
    c0, c1, c2 = row["completions"]
    assert c0["annotations"]["honesty"]["Rating"] is None
    assert c0["fine-grained_score"] is None and c0["overall_score"] is None
    assert c1["annotations"]["truthfulness"] == {"Rating": None, "Rationale": None, "Type": None,
                                                 "Rationale For Rating": None}
    assert "prompt_id" not in row  # openbmb's layout has no id column: it is in dataset_ids
    assert c1["fine-grained_score"] is None and c1["critique"] is None
    assert c2["response"] is None and c2["fine-grained_score"] is None
    assert len(row["completions"]) == 3  # nothing is dropped from the full dataset


def test_no_type_is_written_as_openbmb_writes_it_and_flan_reference_is_a_correct_answer():
    from tasks.assemble.join import ids_from, join

    flan = [{"source": "flan", "source_format": "flan", "instruction": "Is the sky green? Think step by step.",
             "correct_answers": [], "incorrect_answers": []}]
    ins, comps, rates = build(flan, [full([4])])
    ins = ins.set_column(ins.schema.get_field_index("reference_answer"), "reference_answer",
                         pa.array(["The sky is blue.\nSo the answer is no."]))
    rates = pa.Table.from_pylist([{**r, "types": [] if r["aspect"] == "helpfulness" else r["types"]}
                                  for r in rates.to_pylist()], schema=rates.schema)
    row = dataset_table(ins, comps, rates).to_pylist()[0]
    assert row["correct_answers"] == ["The sky is blue.\nSo the answer is no."]
    assert row["incorrect_answers"] == ["None"]
    ann = row["completions"][0]["annotations"]
    assert ann["helpfulness"]["Type"] == ["None"] and ann["truthfulness"]["Type"] == ["1"]
    ids = ids_from(join(ins, comps, rates)).to_pylist()[0]
    assert ids["prompt_id"] == ins["prompt_id"][0].as_py() and ids["completion_request_ids"] == [
        comps["request_id"][0].as_py()]


def test_instruction_without_completions_is_kept():
    ins, comps, rates = build(evol_rows(2), [full([3, 4]), []])
    rows = dataset_rows(ins, comps, rates)
    assert [len(r["completions"]) for r in rows] == [2, 0]
    assert rows[1]["models"] == []


def test_long_table_has_a_row_per_completion_and_aspect_with_missing_marked():
    plan = [[{"instruction_following": 4, "honesty": "N/A", "truthfulness": None, "helpfulness": 4}]]
    table = long_table(*build(evol_rows(1), plan))
    assert table.schema == RATINGS_LONG
    rows = {r["aspect"]: r for r in table.to_pylist()}
    assert set(rows) == {"instruction_following", "honesty", "truthfulness", "helpfulness", "critique"}
    assert rows["honesty"]["rating_na"] and rows["honesty"]["parse_status"] == "na"
    assert rows["truthfulness"]["parse_status"] == "unparsed" and rows["truthfulness"]["rating"] is None
    assert rows["critique"]["parse_status"] == "missing" and rows["critique"]["request_id"] is None
    assert rows["helpfulness"]["source"] == "evol_instruct" and rows["helpfulness"]["response_tokens"] == 120


def test_long_table_marks_failed_generations_apart_from_rating_gaps():
    from tasks.assemble.stats import parse_table

    plan = [[{"response": None}, {"instruction_following": 4}]]
    table = long_table(*build(evol_rows(1), plan))
    status = {(r["completion_index"], r["aspect"]): r["parse_status"] for r in table.to_pylist()}
    assert status[(0, "honesty")] == "no_response" and status[(1, "honesty")] == "missing"
    assert status[(1, "instruction_following")] == "ok"
    parse = parse_table(table.to_pandas()).set_index("aspect")
    # Only the completion that was generated counts: 1 of 1 honesty ratings is missing.
    assert parse.loc["honesty", "failure_rate"] == 1.0 and parse.loc["instruction_following", "failure_rate"] == 0.0
    assert parse.loc["honesty", "no_response"] == 1 and parse.loc["honesty", "total"] == 2


def test_repeated_rating_row_is_an_input_error():
    ins, comps, rates = build(evol_rows(1), [full([4])])
    doubled = pa.concat_tables([rates, rates.slice(0, 1)])
    with pytest.raises(InputError, match="two rows for prompt_id .* aspect 'instruction_following'"):
        dataset_table(ins, comps, doubled)


def test_rating_string_and_fine_grained_helpers():
    assert rating_string(None) is None
    assert rating_string({"rating_na": True, "rating": None}) == "N/A"
    assert rating_string({"rating_na": False, "rating": 3.0}) == "3"
    assert rating_string({"rating_na": False, "rating": 3.5}) == "3.5"
    all_na = {a: {"rating_na": True, "rating": None} for a in
              ("instruction_following", "honesty", "truthfulness", "helpfulness")}
    assert fine_grained_score(all_na) is None


def test_schema_rejects_malformed_row_naming_column_and_row():
    ins, comps, rates = build(evol_rows(2), [full([3, 4]), full([5])])
    rows = dataset_table(ins, comps, rates).to_pylist()
    rows[1]["instruction"] = None
    with pytest.raises(SchemaError, match=r"column 'instruction' is null in row 1"):
        to_table(rows, "dataset")
    rows[1]["instruction"] = "ok"
    rows[0]["completions"][0]["overall_score"] = "ten"
    with pytest.raises(SchemaError, match=r"row 0, column 'completions'"):
        to_table(rows, "dataset")
    good = to_table([{**rows[1]}], "dataset")
    with pytest.raises(SchemaError, match=r"columns .* differ"):
        validate_table(good.drop(["models"]), "dataset")
