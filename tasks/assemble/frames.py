"""Columnar pieces the publisher builds from one join: scores, pair tables, stats frame.

Inputs: a `Joined` (tasks.assemble.join) and the picks of tasks.assemble.binarize.
Outputs:
- `completion_frame`: one pandas row per completion in dataset order (prompt, position,
  model, principle, whether it has a response, overall, fine-grained and aspect scores),
  what the statistics and the pair builder read;
- `prompts`: the pair builder's `Prompt`s, whose candidates point at completion rows
  instead of holding the response text;
- `h4_table` / `argilla_table`: the picked pairs as Arrow tables (schemas
  "preferences_h4" / "preferences_argilla"), texts taken from the columns, not copied
  into Python strings.

Scores follow tasks.assemble.binarize.completion_score on the dataset's strings: an
aspect's score is its rating unless it is N/A or was not read; "overall" is the
critique's score; "fine_grained" the mean of the aspects (tasks.assemble.join).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from storage.schemas import PREFERENCES_ARGILLA, PREFERENCES_H4
from tasks.assemble.binarize import Candidate, PairStats, Pick, Prompt
from tasks.assemble.config import ASPECT_SCORES
from tasks.assemble.join import Joined, _a, fine_grained_scores
from tasks.rating.protocol import ASPECTS, CRITIQUE

_MESSAGE = PREFERENCES_H4.field("prompt").type.value_type


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


def prompts(j: Joined, frame: pd.DataFrame, score: str, stats: PairStats) -> list[Prompt]:
    """The pair builder's prompts; counts unusable completions as binarize.collect does."""
    if score == "overall":
        column = "overall"
    elif score == "fine_grained":
        column = "fine_grained"
    elif score in ASPECT_SCORES:
        column = score
    else:
        raise ValueError(f"publish.score: unknown score {score!r}")
    values = frame[column].to_numpy()
    has = frame["has_response"].to_numpy()
    models, refs = frame["model"].to_numpy(), frame["_row"].to_numpy()
    stats.completions += len(frame)
    stats.completions_without_response += int((~has).sum())
    stats.completions_without_score += int((has & np.isnan(values)).sum())
    ins = j.instructions.select(["source", "prompt_id", "instruction"]).to_pylist()
    out = []
    for i, row in enumerate(ins):
        lo, hi = int(j.offsets[i]), int(j.offsets[i + 1])
        cands = [Candidate(k - lo, models[k], "", float(values[k]), int(refs[k]))
                 for k in range(lo, hi) if has[k] and not np.isnan(values[k])]
        out.append(Prompt(row["source"], row["prompt_id"], row["instruction"], cands))
    stats.prompts = len(out)
    return out


def _turns(role: str, content: pa.Array) -> pa.ListArray:
    """One-message conversations: [{role, content}] per row."""
    n = len(content)
    msgs = pa.StructArray.from_arrays([pa.repeat(pa.scalar(role), n), content], fields=list(_MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), msgs)


def _conversation(user: pa.Array, assistant: pa.Array) -> pa.ListArray:
    """[user turn, assistant turn] per row."""
    n = len(user)
    interleave = np.empty(2 * n, dtype=np.int64)
    interleave[0::2], interleave[1::2] = np.arange(n), np.arange(n) + n
    content = pa.concat_arrays([user, assistant]).take(pa.array(interleave))
    roles = pa.array(np.tile(np.array(["user", "assistant"], dtype=object), n), pa.string())
    msgs = pa.StructArray.from_arrays([roles, content], fields=list(_MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), msgs)


def _texts(j: Joined, picks: list[Pick]) -> tuple[pa.Array, pa.Array, pa.Array]:
    response = _a(j.comps["response"])
    prompt = pa.array([p.prompt for p, _, _ in picks], pa.string())
    chosen = response.take(pa.array([c.ref for _, c, _ in picks], pa.int64()))
    rejected = response.take(pa.array([r.ref for _, _, r in picks], pa.int64()))
    return prompt, chosen, rejected


def h4_table(j: Joined, picks: list[Pick]) -> pa.Table:
    prompt, chosen, rejected = _texts(j, picks)
    cols = {
        "prompt": _turns("user", prompt), "prompt_id": pa.array([p.prompt_id for p, _, _ in picks], pa.string()),
        "chosen": _turns("assistant", chosen), "rejected": _turns("assistant", rejected),
        "messages": _conversation(prompt, chosen),
        "score_chosen": pa.array([c.score for _, c, _ in picks], pa.float64()),
        "score_rejected": pa.array([r.score for _, _, r in picks], pa.float64()),
    }
    return pa.Table.from_arrays([cols[f.name] for f in PREFERENCES_H4], schema=PREFERENCES_H4)


def argilla_table(j: Joined, picks: list[Pick]) -> pa.Table:
    prompt, chosen, rejected = _texts(j, picks)
    cols = {
        "source": pa.array([p.source for p, _, _ in picks], pa.string()), "prompt": _turns("user", prompt),
        "prompt_id": pa.array([p.prompt_id for p, _, _ in picks], pa.string()),
        "chosen": _turns("assistant", chosen), "chosen-rating": pa.array([c.score for _, c, _ in picks], pa.float64()),
        "chosen-model": pa.array([c.model for _, c, _ in picks], pa.string()),
        "rejected": _turns("assistant", rejected),
        "rejected-rating": pa.array([r.score for _, _, r in picks], pa.float64()),
        "rejected-model": pa.array([r.model for _, _, r in picks], pa.string()),
    }
    return pa.Table.from_arrays([cols[f.name] for f in PREFERENCES_ARGILLA], schema=PREFERENCES_ARGILLA)
