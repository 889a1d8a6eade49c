"""Columnar pieces the publisher builds from one join: scores, pair tables, stats frame.

Inputs: a `Joined` (tasks.assemble.join) and the picks of tasks.assemble.binarize.
Outputs:
- `completion_frame`: one pandas row per completion in dataset order (prompt, position,
  model, principle, whether it has a response, overall, fine-grained and aspect scores),
  what the statistics and the pair builder read;
- `prompts_by_score`: the pair builder's `Prompt`s under each score, whose candidates
  point at completion rows instead of holding the response text;
- `pair_table`: picked pairs as an Arrow table of their layout (schemas
  "preferences_h4" / "preferences_trl" / "preferences_argilla"), texts taken from the
  columns, not copied into Python strings.

Scores follow tasks.assemble.binarize.completion_score on the dataset's strings: an
aspect's score is its rating unless it is N/A or was not read; "overall" is the
critique's score; "fine_grained" the mean of the aspects (tasks.assemble.join).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storage.schemas import ASPECTS, CRITIQUE, PREFERENCES_H4, SCHEMAS
from tasks.assemble.binarize import Candidate, PairStats, Pick, Prompt
from tasks.assemble.config import LAYOUT_SCHEMA
from tasks.assemble.join import Joined, _a, fine_grained_scores

_MESSAGE = PREFERENCES_H4.field("chosen").type.value_type


def _aspect_score(j: Joined, aspect: str) -> np.ndarray:
    """The aspect's rating as a float, NaN where it is N/A or was not read."""
    t = j.ratings.select(["rating", "rating_na"]).take(j.rows[aspect])
    usable = pc.and_(pc.invert(pc.fill_null(_a(t["rating_na"]), False)), pc.is_valid(_a(t["rating"])))
    return pc.if_else(usable, _a(t["rating"]), pa.scalar(None, pa.float64())).to_numpy(zero_copy_only=False)


def completion_frame(j: Joined) -> pd.DataFrame:
    """One row per completion, in dataset order (instruction order, then completion_index)."""
    order = j.order
    positions = np.arange(len(order), dtype=np.int64) - np.repeat(j.offsets[:-1], np.diff(j.offsets))
    comps = j.comps
    response = _a(comps["response"]).take(pa.array(order))
    has_response = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(response)), 0), False)
    crit = _a(j.ratings["rating"]).take(j.rows[CRITIQUE]).to_numpy(zero_copy_only=False)
    take = pa.array(order)

    def text(col: pa.Array) -> np.ndarray:  # repeated strings share one Python object each
        return col.take(take).to_pandas(deduplicate_objects=True).to_numpy(dtype=object)

    frame = {
        "prompt_id": text(_a(comps["prompt_id"])),
        "source": text(j.source),
        "completion_index": positions,
        "model": text(_a(comps["model"])),
        "principle": text(_a(comps["principle"])),
        "has_response": has_response.to_numpy(zero_copy_only=False),
        "overall": crit.astype(np.float64)[order],
        "fine_grained": fine_grained_scores(j).to_numpy(zero_copy_only=False)[order],
    }
    for aspect in ASPECTS:
        frame[aspect] = _aspect_score(j, aspect)[order]
    frame["_row"] = order  # the completion's row in j.comps
    return pd.DataFrame(frame)


def _score_column(score: str) -> str:
    if score in ("overall", "fine_grained") or score in ASPECTS:
        return score
    raise ValueError(f"publish.pairs: unknown score {score!r}")


def prompts_by_score(j: Joined, frame: pd.DataFrame, scores: list[str], stats: PairStats) -> dict[str, list[Prompt]]:
    """The pair builder's prompts under each score (candidates: completions with a response,
    NaN where the score is missing), counted as binarize.collect counts them."""
    columns = {s: frame[_score_column(s)].to_numpy() for s in scores}
    has = frame["has_response"].to_numpy()
    models, refs = frame["model"].to_numpy(), frame["_row"].to_numpy()
    stats.completions += len(frame)
    stats.completions_without_response += int((~has).sum())
    ins = j.instructions.select(["source", "prompt_id", "instruction"]).to_pylist()
    out: dict[str, list[Prompt]] = {s: [] for s in scores}
    for i, row in enumerate(ins):
        lo, hi = int(j.offsets[i]), int(j.offsets[i + 1])
        keep = [k for k in range(lo, hi) if has[k]]
        for s, values in columns.items():
            cands = [Candidate(k - lo, models[k], "", float(values[k]), int(refs[k])) for k in keep]
            out[s].append(Prompt(row["source"], row["prompt_id"], row["instruction"], cands))
    stats.prompts = len(ins)
    return out


def _turns(role: str, content: pa.Array) -> pa.ListArray:
    """One-message conversations: [{content, role}] per row."""
    n = len(content)
    msgs = pa.StructArray.from_arrays([content, pa.repeat(pa.scalar(role), n).cast(pa.string())], fields=list(_MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), msgs)


def _conversation(user: pa.Array, assistant: pa.Array) -> pa.ListArray:
    """[user turn, assistant turn] per row."""
    n = len(user)
    interleave = np.empty(2 * n, dtype=np.int64)
    interleave[0::2], interleave[1::2] = np.arange(n), np.arange(n) + n
    content = pa.concat_arrays([user, assistant]).take(pa.array(interleave))
    roles = pa.array(np.tile(np.array(["user", "assistant"], dtype=object), n), pa.string())
    msgs = pa.StructArray.from_arrays([content, roles], fields=list(_MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), msgs)


def _texts(j: Joined, picks: list[Pick]) -> tuple[pa.Array, pa.Array, pa.Array]:
    response = _a(j.comps["response"])
    prompt = pa.array([p.prompt for p, _, _ in picks], pa.string())
    chosen = response.take(pa.array([c.ref for _, c, _ in picks], pa.int64()))
    rejected = response.take(pa.array([r.ref for _, _, r in picks], pa.int64()))
    return prompt, chosen, rejected


def pair_table(j: Joined, picks: list[Pick], layout: str, split: str) -> pa.Table:
    """Picks as a table of the layout's schema; equal to binarize.pair_row per pick."""
    prompt, chosen, rejected = _texts(j, picks)
    schema = SCHEMAS[LAYOUT_SCHEMA[layout]]
    f64 = pa.float64()
    cols = {"prompt_id": pa.array([p.prompt_id for p, _, _ in picks], pa.string()),
            "score_chosen": pa.array([c.score for _, c, _ in picks], f64),
            "score_rejected": pa.array([r.score for _, _, r in picks], f64)}
    if layout == "trl":
        cols.update(prompt=_turns("user", prompt), chosen=_turns("assistant", chosen),
                    rejected=_turns("assistant", rejected), messages=_conversation(prompt, chosen))
    else:
        cols.update(prompt=prompt, chosen=_conversation(prompt, chosen), rejected=_conversation(prompt, rejected))
        cols["messages"] = _turns("user", prompt) if split.endswith("_gen") else cols["chosen"]
    if layout == "argilla":
        cols.update({"source": pa.array([p.source for p, _, _ in picks], pa.string()),
                     "chosen-rating": cols["score_chosen"], "rejected-rating": cols["score_rejected"],
                     "chosen-model": pa.array([c.model for _, c, _ in picks], pa.string()),
                     "rejected-model": pa.array([r.model for _, _, r in picks], pa.string())})
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)
