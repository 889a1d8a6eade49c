"""The quality report's plots (matplotlib, PNG bytes).

Inputs: a `RunStats` (tasks.assemble.stats). Outputs: {file name: PNG bytes} for
rating distributions per model and aspect, mean score per model (the paper's leaderboard
view), aspect-to-aspect correlation, parse failures per aspect and tokens/cost per stage.
Rendering uses the non-interactive Agg backend and never opens a window.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from storage.schemas import ASPECTS  # noqa: E402
from tasks.assemble.stats import RATING_VALUES, RunStats  # noqa: E402

# 1..5 from red to green; N/A grey; no rating black, so gaps stand out.
VALUE_COLOURS = ["#d73027", "#fc8d59", "#fee08b", "#91cf60", "#1a9850", "#bdbdbd", "#252525"]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _empty(title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.4, "no data in this run", ha="center", va="center", fontsize=12)
    return _png(fig)


def rating_distribution(stats: RunStats) -> bytes:
    by_model = stats.ratings_by_model
    title = "Rating distribution per model and aspect"
    if by_model.empty:
        return _empty(title)
    models = sorted(by_model["model"].unique())
    fig, axes = plt.subplots(2, 2, figsize=(13, 2.2 + 0.45 * len(models) * 2), sharey=True)
    for ax, aspect in zip(axes.flat, ASPECTS):
        sub = by_model[by_model["aspect"] == aspect].pivot_table(
            index="model", columns="value", values="count", aggfunc="sum", fill_value=0)
        sub = sub.reindex(index=models, columns=RATING_VALUES, fill_value=0)
        share = sub.div(sub.sum(axis=1).replace(0, np.nan), axis=0).fillna(0)
        left = np.zeros(len(models))
        for value, colour in zip(RATING_VALUES, VALUE_COLOURS):
            ax.barh(models, share[value], left=left, color=colour, label=value, edgecolor="white", linewidth=0.5)
            left += share[value].to_numpy()
        ax.set_title(aspect.replace("_", " "))
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of the model's completions")
    axes[0][0].invert_yaxis()  # shared y axis: inverting once puts the first model on top
    axes[0][0].set_ylabel("model")
    axes[1][0].set_ylabel("model")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, title="rating", loc="upper center", ncol=len(RATING_VALUES),
               bbox_to_anchor=(0.5, 1.035), frameon=False)
    fig.suptitle(title, y=1.08, fontsize=14)
    fig.tight_layout()
    return _png(fig)


def leaderboard(stats: RunStats) -> bytes:
    title = "Mean score per model"
    models = stats.models.dropna(subset=["fine_grained"]) if not stats.models.empty else stats.models
    if models.empty:
        return _empty(title)
    models = models.sort_values("fine_grained")
    names = [f"{m} (n={n})" for m, n in zip(models["model"], models["completions"])]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 1.5 + 0.45 * len(models)), sharey=True)
    ax1.barh(names, models["fine_grained"], color="#4575b4")
    ax1.set_xlim(1, 5)
    ax1.set_xlabel("fine-grained score (mean of aspect ratings, 1-5)")
    ax1.set_ylabel("model")
    ax1.set_title("fine-grained")
    overall = models["overall"].fillna(0)
    ax2.barh(names, overall, color="#91bfdb")
    ax2.set_xlim(1, 10)
    ax2.set_xlabel("overall score (critique, 1-10)")
    ax2.set_title("overall")
    for ax, col in ((ax1, "fine_grained"), (ax2, "overall")):
        for y, v in enumerate(models[col]):
            if pd.notna(v):
                ax.text(v, y, f" {v:.2f}", va="center", fontsize=9)
    fig.suptitle(f"{title} (n = completions generated)", fontsize=13)
    fig.tight_layout()
    return _png(fig)


def correlation(stats: RunStats) -> bytes:
    title = "Aspect-to-aspect correlation (Pearson, per completion)"
    corr = stats.correlation.set_index("aspect")
    if corr.isna().all().all():
        return _empty(title)
    labels = [c.replace("_", "\n") if c != "overall" else "overall\n(critique)" for c in corr.columns]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(corr.to_numpy(dtype=float), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=9)
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    for i in range(len(labels)):
        for j in range(len(labels)):
            v = corr.iat[i, j]
            colour = "white" if pd.notna(v) and abs(v) > 0.6 else "black"  # legible on dark cells
            ax.text(j, i, "–" if pd.isna(v) else f"{v:.2f}", ha="center", va="center", fontsize=10, color=colour)
    fig.colorbar(im, ax=ax, label="correlation coefficient")
    ax.set_xlabel("aspect")
    ax.set_ylabel("aspect")
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def parse_failures(stats: RunStats) -> bytes:
    title = "Judge answers without a usable rating, per aspect"
    parse = stats.parse
    if parse.empty or parse["total"].sum() == 0:
        return _empty(title)
    statuses = [("unparsed", "#fc8d59", "unreadable answer"), ("failed", "#d73027", "request failed"),
                ("missing", "#252525", "never rated")]
    total = (parse["total"] - parse["no_response"]).replace(0, np.nan).to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bottom = np.zeros(len(parse))
    for status, colour, label in statuses:
        share = np.nan_to_num(parse[status].to_numpy(dtype=float) / total * 100)
        ax.bar(parse["aspect"], share, bottom=bottom, color=colour, label=f"{status}: {label}")
        bottom += share
    for x, (pct, n) in enumerate(zip(bottom, parse["total"] - parse["no_response"])):
        bad = int(round(pct * n / 100))
        ax.text(x, pct, f"{pct:.1f}%\n({bad:,} of {n:,})", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(5.0, float(bottom.max()) * 1.35))
    ax.set_ylabel("% of the aspect's ratings\n(completions that failed to generate left out)")
    ax.set_xlabel("aspect (critique = the 1-10 overall score)")
    ax.set_title(title)
    ax.legend(title="status", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    return _png(fig)


def cost(stats: RunStats) -> bytes:
    title = "Tokens and cost per stage"
    c = stats.cost
    if c.empty:
        return _empty(title)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(c["stage"], c["prompt_tokens"], color="#4575b4", label="prompt tokens")
    ax1.bar(c["stage"], c["completion_tokens"], bottom=c["prompt_tokens"], color="#fdae61", label="completion tokens")
    ax1.set_ylabel("tokens")
    ax1.set_xlabel("stage")
    ax1.set_title("tokens (calls on top; re-asks count in their call's tokens)")
    for x, (p, q, n) in enumerate(zip(c["prompt_tokens"], c["completion_tokens"], c["calls"])):
        ax1.text(x, p + q, f"{n:,} calls", ha="center", va="bottom", fontsize=9)
    ax1.set_ylim(0, max(1, float((c["prompt_tokens"] + c["completion_tokens"]).max())) * 1.15)
    ax1.legend()
    usd = c["usd"].astype(float)
    ax2.bar(c["stage"], usd.fillna(0), color="#d73027")
    for x, v in enumerate(usd):
        ax2.text(x, 0 if pd.isna(v) else v, "not priced" if pd.isna(v) else f"${v:,.2f}", ha="center",
                 va="bottom", fontsize=9)
    ax2.set_ylim(0, max(1.0, float(usd.max()) if usd.notna().any() else 1.0) * 1.15)
    ax2.set_ylabel("US dollars")
    ax2.set_xlabel("stage")
    ax2.set_title("cost (judge list prices; local models unpriced)")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return _png(fig)


PLOTS = {
    "rating_distribution.png": rating_distribution,
    "leaderboard.png": leaderboard,
    "correlation.png": correlation,
    "parse_failures.png": parse_failures,
    "cost.png": cost,
}


def render_all(stats: RunStats) -> dict[str, bytes]:
    return {name: fn(stats) for name, fn in PLOTS.items()}
