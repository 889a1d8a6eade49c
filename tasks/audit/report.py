"""The audit's Markdown (dataset card section, Prefect artifact) and its plots.

Inputs: the AUDIT_RESULTS and AUDIT_RATINGS tables (as DataFrames), the audit's cost lines
and the instructions of the sampled prompts (for the disagreement list). Outputs: Markdown
text, and {file name: PNG bytes} for `audit/biases.png` (position shift per position,
length correlation, self-preference gap, each with its interval) and
`audit/agreement.png` (agreement with the second judge and the human sets, with the
annotators' own agreement and the published baseline judge beside them).

A figure is flagged when its interval excludes the no-effect value (0 for shifts,
correlations and gaps): that is where the judge has a bias worth reading about.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tasks.markdown import table  # noqa: E402
from tasks.rating.cost import format_summary  # noqa: E402

PLOTS = ("biases.png", "agreement.png")
_BIAS = {("position", "mean_shift"), ("position", "flip_rate"), ("verbosity", "spearman"),
         ("verbosity", "within_instruction"), ("self_preference", "gap"),
         ("self_preference", "excess_over_second_judge")}


def fmt(value, low=None, high=None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    v = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if low is None or high is None or np.isnan(low) or np.isnan(high):
        return v
    return f"{v} [{low:.3g}, {high:.3g}]"


def flagged(row) -> bool:
    """The interval excludes zero for a bias figure."""
    if (row["probe"], row["metric"]) not in _BIAS or pd.isna(row["low"]) or pd.isna(row["high"]):
        return False
    return bool(row["low"] > 0 or row["high"] < 0)


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["value [interval]"] = [fmt(v, lo, hi) for v, lo, hi in zip(out["value"], out["low"], out["high"])]
    out["bias?"] = ["**yes**" if flagged(r) else "" for _, r in out.iterrows()]
    return out


def _position(df: pd.DataFrame) -> str:
    sh = _cells(df[df["metric"] == "mean_shift"])
    sh["value [interval]"] = [f"**{c}**" if b else c for c, b in zip(sh["value [interval]"], sh["bias?"])]
    if sh.empty:
        return "_position probe off or nothing to re-ask._"
    wide = sh.pivot_table(index="aspect", columns="position", values="value [interval]", aggfunc="first")
    wide.columns = [f"Text {int(c)}" for c in wide.columns]
    flips = _cells(df[df["metric"] == "flip_rate"])
    flips = pd.Series([f"**{c}**" if b else c for c, b in zip(flips["value [interval]"], flips["bias?"])],
                      index=flips["aspect"])
    wide["flip rate"] = flips.reindex(wide.index)
    return table(wide.reset_index())


def _simple(df: pd.DataFrame, cols=("set", "aspect", "metric")) -> str:
    if df.empty:
        return "_(not measured)_"
    c = _cells(df)
    keep = [*cols, "value [interval]", "n"] + (["bias?"] if c["bias?"].any() else []) + ["note"]
    return table(c[keep].fillna(""))


def disagreements(rows: pd.DataFrame, instructions: dict[str, str], top: int) -> pd.DataFrame:
    """The judge/second-judge pairs furthest apart (largest absolute difference first)."""
    keys = ["item_id", "aspect", "completion_index"]
    first = rows[(rows["probe"] == "rate")].dropna(subset=["rating"])
    second = rows[(rows["probe"] == "second_judge")].dropna(subset=["rating"])
    if second.empty or not top:
        return pd.DataFrame()
    m = first[keys + ["model", "rating", "response_chars"]].merge(second[keys + ["rating"]], on=keys,
                                                                     suffixes=("_judge", "_second"))
    m["difference"] = m["rating_second"] - m["rating_judge"]
    m = m.reindex(m["difference"].abs().sort_values(ascending=False, kind="stable").index).head(top)
    m["instruction"] = [instructions.get(p, "")[:80] for p in m["item_id"]]
    m["prompt_id"] = m["item_id"].str[:12]
    return m[["prompt_id", "aspect", "model", "rating_judge", "rating_second", "difference", "response_chars",
              "instruction"]]


def render_audit(results: pd.DataFrame, rows: pd.DataFrame, cost: list[dict], instructions: dict[str, str],
           judge: str, top: int = 10, plots: list[str] | None = None, heading: str = "##") -> str:
    r = results
    run_items = rows.loc[rows["set"] == "run", "item_id"].nunique()
    sets = sorted(rows.loc[rows["probe"] == "human", "set"].unique())
    parts = [
        f"{heading} Judge audit\n",
        f"How far the ratings of `{judge}` can be trusted, measured on a seeded sample of {run_items:,} "
        f"instructions{' and the human sets ' + ', '.join(f'`{s}`' for s in sets) if sets else ''}. Intervals are "
        "percentile bootstrap intervals over instructions (human sets: over rows). **yes** marks a bias figure "
        "whose interval excludes zero (in bold in the position table). How to read each figure: "
        "docs/rating.md, section \"Judge audit\".\n",
    ]
    parts += [f"![{p}]({p})\n" for p in plots or []]
    parts += [f"{heading}# Position\n", "Mean rating shift of a text shown at each position (against its mean over "
              "every order it was shown in; 0 = no position effect), and the share of strictly ranked pairs whose "
              "order reversed when their positions were swapped.\n", _position(r[r["probe"] == "position"])]
    parts += [f"\n{heading}# Verbosity\n", "Spearman correlation of rating with response length: over all rated "
              "texts, and within instructions (only differences between answers to the same instruction).\n",
              _simple(r[r["probe"] == "verbosity"], ("aspect", "metric"))]
    sp = r[r["probe"] == "self_preference"]
    parts += [f"\n{heading}# Self-preference\n",
              "Mean (own model's rating - the other models' mean) on the same instructions; the excess over the "
              "second judge takes out what the second judge sees as a real quality difference.\n"
              if not sp.empty else "", _simple(sp, ("aspect", "metric")) if not sp.empty else
              "_Not measured: the judge's model is not in the pool (or `audit.self_model` is not set)._"]
    sj = r[r["probe"] == "second_judge"]
    parts += [f"\n{heading}# Second judge\n", _simple(sj, ("aspect", "metric")) if not sj.empty else
              "_Not measured: set `audit.second_judge` to an endpoint name._"]
    dis = disagreements(rows, instructions, top)
    if not dis.empty:
        parts += ["\nWhere the two judges disagree most:\n", table(dis)]
    hu = r[r["probe"] == "human"]
    parts += [f"\n{heading}# Humans\n", "Pointwise sets: the human rating on the judge's 1-5 scale (HelpSteer: "
              "0-4 + 1; helpfulness -> helpfulness, correctness -> truthfulness). Pairwise sets: the judge prefers "
              "the response with the higher mean rating; agreement with the human majority, next to the annotators' "
              "own agreement and the published baseline judge's on the same rows.\n",
              _simple(hu) if not hu.empty else "_No human set configured (`audit.human_sets`)._"]
    parts += [f"\n{heading}# Cost of the audit\n", format_summary(cost) if cost else "_No request sent._", ""]
    return "\n".join(parts)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _bars(ax, labels, rows: pd.DataFrame, colour, title, xlabel, ref: float | None = 0.0):
    y = np.arange(len(labels))
    v = rows["value"].to_numpy(float)
    lo = np.where(rows["low"].isna(), v, rows["low"]).astype(float)
    hi = np.where(rows["high"].isna(), v, rows["high"]).astype(float)
    ax.barh(y, v, color=colour, alpha=0.8)
    ax.errorbar(v, y, xerr=[v - lo, hi - v], fmt="none", ecolor="black", capsize=4)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    if ref is not None:
        ax.axvline(ref, color="grey", linewidth=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)


def bias_plot(results: pd.DataFrame) -> bytes:
    pos = results[(results["probe"] == "position") & (results["metric"] == "mean_shift")]
    verb = results[results["probe"] == "verbosity"]
    selfp = results[results["probe"] == "self_preference"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 2.4 + 0.5 * max(len(verb), len(selfp), 4)),
                             gridspec_kw={"width_ratios": [1.4, 1, 1]})
    ax = axes[0]
    for k, (aspect, a) in enumerate(pos.groupby("aspect", sort=True)):
        a = a.sort_values("position")
        x = a["position"].to_numpy(float) + (k - 1.5) * 0.08
        v = a["value"].to_numpy(float)
        ax.errorbar(x, v, yerr=[v - a["low"].fillna(a["value"]), a["high"].fillna(a["value"]) - v], marker="o",
                    capsize=4, label=aspect.replace("_", " "))
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_title("Position: rating shift by position shown")
    ax.set_xlabel("position (Text N)")
    ax.set_ylabel("mean rating shift (points)")
    if len(pos):
        ax.set_xticks(sorted(pos["position"].unique().astype(int)))
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    labels = [f"{a.replace('_', ' ')}: {m.replace('_', ' ')}" for a, m in zip(verb["aspect"], verb["metric"])]
    _bars(axes[1], labels, verb, "#4575b4", "Verbosity: rating vs length", "Spearman correlation")
    axes[1].set_xlim(-1, 1)
    labels = [f"{a.replace('_', ' ')}: {m.replace('_', ' ')}" for a, m in zip(selfp["aspect"], selfp["metric"])]
    _bars(axes[2], labels, selfp, "#d73027", "Self-preference: own - others", "rating points")
    if selfp.empty:
        axes[2].text(0.5, 0.5, "not measured", ha="center", transform=axes[2].transAxes)
    fig.suptitle("Judge biases (bars: bootstrap intervals; grey line: no effect)", fontsize=13)
    fig.tight_layout()
    return _png(fig)


def agreement_plot(results: pd.DataFrame) -> bytes:
    want = {"weighted_kappa": "weighted kappa", "exact": "exact", "agreement_with_majority": "judge vs majority",
            "kappa_with_majority": "judge kappa vs majority", "annotator_pairwise_agreement": "annotators (each pair)",
            "annotator_pairwise_kappa": "annotators kappa", "baseline_agreement_with_majority": "gpt-3.5 vs majority"}
    r = results[results["probe"].isin(["second_judge", "human"]) & results["metric"].isin(want)]
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.32 * max(len(r), 3)))
    if r.empty:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no second judge or human set in this audit", ha="center")
        return _png(fig)
    labels = [f"{'second judge' if p == 'second_judge' else s} / {a.replace('_', ' ')}: {want[m]}"
              for p, s, a, m in zip(r["probe"], r["set"], r["aspect"], r["metric"])]
    colours = ["#91bfdb" if m.startswith(("annotator", "baseline")) else "#1a9850" for m in r["metric"]]
    _bars(ax, labels, r, colours, "Agreement (green: the judge; blue: reference raters)", "agreement / kappa", None)
    ax.set_xlim(min(-0.2, float(np.nanmin(r["low"].fillna(r["value"])))), 1.05)
    ax.axvline(0, color="grey", linewidth=1)
    fig.tight_layout()
    return _png(fig)


def plots(results: pd.DataFrame) -> dict[str, bytes]:
    return {"biases.png": bias_plot(results), "agreement.png": agreement_plot(results)}
