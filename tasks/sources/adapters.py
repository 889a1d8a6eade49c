"""One small function per real source format.

Inputs: a file path (local or fsspec URL) and, for generic formats, column names.
Outputs: raw rows `{instruction, correct_answers, incorrect_answers, reference_answer,
false_premise, task, source_file, source_row}`; filtering and sampling happen later.
A structurally broken row raises InputError naming the file and row; a row with an empty
instruction is kept here (and counted as empty by the sampler).
"""
from __future__ import annotations

import os
from typing import Any, Callable

from tasks.errors import InputError
from tasks.sources.io import read_csv_dicts, read_json_records, read_tabular, read_tsv_rows

Row = dict[str, Any]


def _row(path: str, row: int, instruction: Any, **extra: Any) -> Row:
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"{path}: row {row}: instruction is {type(instruction).__name__}, expected text")
    return {
        "instruction": (instruction or "").strip(),
        "correct_answers": extra.get("correct_answers") or [],
        "incorrect_answers": extra.get("incorrect_answers") or [],
        "reference_answer": extra.get("reference_answer"),
        "false_premise": extra.get("false_premise"),
        "task": extra.get("task"),
        "source_file": os.path.basename(path),
        "source_row": row,
    }


def _split_answers(text: str | None) -> list[str]:
    # TruthfulQA separates answers with "; " (a bare ";" can occur inside an answer).
    return [a.strip() for a in (text or "").split("; ") if a.strip()]


def truthful_qa(path: str) -> list[Row]:
    """TruthfulQA.csv: Question plus its correct and incorrect answers (`; `-separated)."""
    cols = ["Question", "Best Answer", "Correct Answers", "Incorrect Answers"]
    out = []
    for line, r in read_csv_dicts(path, cols):
        correct = _split_answers(r["Correct Answers"])
        best = (r["Best Answer"] or "").strip()
        if best and best not in correct:
            correct.insert(0, best)
        out.append(_row(path, line, r["Question"], correct_answers=correct,
                        incorrect_answers=_split_answers(r["Incorrect Answers"]), task=(r.get("Category") or None)))
    return out


def false_qa(path: str) -> list[Row]:
    """FalseQA CSV (question, answer, label): keeps label 1, the false-premise questions."""
    out = []
    for line, r in read_csv_dicts(path, ["question", "answer", "label"]):
        label = (r["label"] or "").strip()
        if label not in ("0", "1"):
            raise InputError(f"{path}: line {line}: label must be 0 or 1, got {label!r}")
        if label == "1":
            out.append(_row(path, line, r["question"], reference_answer=(r["answer"] or "").strip() or None,
                            false_premise=True))
    return out


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def flan_cot(path: str) -> list[Row]:
    """FLAN chain-of-thought TSV without header: question, answer, rationale (`\\n` escaped)."""
    task = os.path.basename(path).split(".")[0].removesuffix("_train")
    out = []
    for line, (question, answer, rationale) in read_tsv_rows(path, 3):
        ref = f"{_unescape(rationale).strip()}\nSo the answer is {_unescape(answer).strip()}."
        out.append(_row(path, line, _unescape(question), reference_answer=ref, task=f"cot_{task}"))
    return out


def flan_tasks(path: str) -> list[Row]:
    """FLAN per-task files: a CoT-style TSV (one task per file) or records with task, inputs, targets."""
    if path.lower().endswith(".tsv"):
        return flan_cot(path)
    out = []
    for row, r in read_tabular(path, ["task", "inputs", "targets"]):
        out.append(_row(path, row, r["inputs"], reference_answer=str(r["targets"]).strip() or None, task=str(r["task"])))
    return out


def sharegpt(path: str) -> list[Row]:
    """ShareGPT JSON: the first human turn of each conversation."""
    out = []
    for row, rec in read_json_records(path):
        convs = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(convs, list):
            raise InputError(f"{path}: row {row}: expected an object with a 'conversations' list")
        first = next((t for t in convs if isinstance(t, dict) and t.get("from") in ("human", "user")), None)
        out.append(_row(path, row, first.get("value") if first else "", task=rec.get("id")))
    return out


def ultrachat(path: str) -> list[Row]:
    """UltraChat JSON/JSONL: `data` is the prompt (eval file) or the list of turns (train files)."""
    out = []
    for row, rec in read_json_records(path):
        if not isinstance(rec, dict) or "data" not in rec:
            raise InputError(f"{path}: row {row}: expected an object with a 'data' field")
        data = rec["data"]
        first = data[0] if isinstance(data, list) and data else data
        task = rec.get("class")
        out.append(_row(path, row, first, task=task.strip() if isinstance(task, str) else None))
    return out


def evol_instruct(path: str) -> list[Row]:
    """Evol-Instruct JSON/JSONL: `instruction`/`Instruction`, or the first human turn."""
    out = []
    for row, rec in read_json_records(path):
        if not isinstance(rec, dict):
            raise InputError(f"{path}: row {row}: expected a JSON object")
        if "conversations" in rec:
            first = next((t.get("value") for t in rec["conversations"] if t.get("from") in ("human", "user")), "")
        elif "instruction" in rec or "Instruction" in rec:
            first = rec.get("instruction", rec.get("Instruction"))
        else:
            raise InputError(f"{path}: row {row}: no 'instruction', 'Instruction' or 'conversations' field")
        out.append(_row(path, row, first, task=rec.get("Skill")))
    return out


def generic(path: str, column: str, id_column: str | None = None) -> list[Row]:
    """JSONL/JSON, CSV/TSV or Parquet with a named instruction column."""
    required = [column] + ([id_column] if id_column else [])
    return [_row(path, row, r[column], task=str(r[id_column]) if id_column else None)
            for row, r in read_tabular(path, required)]


ADAPTERS: dict[str, Callable[[str], list[Row]]] = {
    "truthful_qa": truthful_qa,
    "false_qa": false_qa,
    "flan": flan_cot,
    "sharegpt": sharegpt,
    "ultrachat": ultrachat,
    "evol_instruct": evol_instruct,
}
