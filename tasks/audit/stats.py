"""The audit's statistics: AUDIT_RATINGS rows in, AUDIT_RESULTS rows out.

Inputs: the audit's rows (pandas DataFrame of AUDIT_RATINGS), the self model's name, and
the bootstrap settings. Outputs: one result dict per (probe, set, aspect, metric[,
position]) with a percentile bootstrap interval (scipy.stats.bootstrap) over the
independent units: instructions for the run probes, rows for the human sets. Correlations
are scipy's Spearman, agreement is scikit-learn's Cohen's kappa (quadratic weights for
1-5 ratings, unweighted for 3-way preferences).

What each figure means (how to read them: docs/rating.md, "Judge audit"):
- position / mean_shift at position p: a text's rating when shown at p minus its mean over
  every order it was shown in. 0 everywhere: no position effect; > 0 at p: the judge rates
  texts higher there. flip_rate: of text pairs the rate stage's order ranked strictly, the
  share whose order reversed when their relative positions were swapped.
- verbosity / spearman: rating vs response length in characters over all rated texts;
  within_instruction: the mean per-instruction Spearman (only length differences between
  answers to the same instruction count).
- self_preference / gap: mean (own model's rating - other models' mean) per instruction;
  excess_over_second_judge: the same gap minus the second judge's gap on the same texts
  (what is left once the texts' quality, as the second judge sees it, is taken out).
- second_judge and human (pointwise): weighted kappa, Spearman, exact and within-one
  agreement; mean_difference = other - judge.
- human (pairwise): agreement of the judge's preference with the human majority (an
  unreadable answer counts as a miss), its kappa, and next to it the annotators' own mean
  pairwise agreement and kappa and the published baseline judge's agreement.
Rows whose rating is null (N/A, unreadable, failed) are never compared; `n` says how many were.
"""
from __future__ import annotations

import warnings
from itertools import combinations
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st
from sklearn.metrics import cohen_kappa_score


def result(probe: str, set_: str, aspect: str, metric: str, value, low=None, high=None, n: int = 0,
           position: int | None = None, note: str | None = None) -> dict:
    def f(v):
        return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v)
    return {"probe": probe, "set": set_, "aspect": aspect, "metric": metric, "position": position,
            "value": f(value), "low": f(low), "high": f(high), "n": int(n), "note": note}


def interval(units: Sequence, stat: Callable[[list], float], resamples: int, confidence: float,
             seed: int) -> tuple[float, float | None, float | None]:
    """stat over all units, and its percentile bootstrap interval resampling the units."""
    value = stat(list(units))
    if len(units) < 2 or value is None or not np.isfinite(value):
        return value, None, None
    idx = np.arange(len(units), dtype=float)

    def boot(i):
        v = stat([units[int(k)] for k in i])
        return np.nan if v is None else v

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = st.bootstrap((idx,), boot, n_resamples=resamples, confidence_level=confidence, method="percentile",
                           vectorized=False, random_state=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return value, float(low), float(high)


def _spearman(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(st.spearmanr(x, y).statistic)


def _kappa(a, b, weights: str | None, labels) -> float | None:
    if not len(a):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = cohen_kappa_score(a, b, labels=labels, weights=weights)
    return float(k) if np.isfinite(k) else None


class Audit:
    """Computes every figure of one audit's rows."""

    def __init__(self, rows: pd.DataFrame, self_model: str | None = None, resamples: int = 2000,
                 confidence: float = 0.95, seed: int = 0):
        self.rows, self.self_model = rows, self_model
        self.boot = dict(resamples=resamples, confidence=confidence, seed=seed)
        self.out: list[dict] = []

    def _ci(self, units, stat):
        return interval(units, stat, **self.boot)

    def all(self) -> list[dict]:
        for fn in (self.position, self.verbosity, self.self_preference, self.second_judge, self.humans):
            fn()
        return self.out

    # -- position -------------------------------------------------------------------
    def position(self) -> None:
        r = self.rows[(self.rows["set"] == "run") & self.rows["probe"].isin(["rate", "position"])]
        if not (r["probe"] == "position").any():
            return
        for aspect, a in r.groupby("aspect", sort=True):
            a = a[a["item_id"].isin(a.loc[a["probe"] == "position", "item_id"])]
            rated = a.dropna(subset=["rating"])
            variants = a.groupby(["item_id", "completion_index"])["variant"].nunique()
            got = rated.groupby(["item_id", "completion_index"])["variant"].nunique()
            full = got[got == variants.reindex(got.index)].index  # rated in every order it was shown
            keep = rated.set_index(["item_id", "completion_index"]).loc[lambda d: d.index.isin(full)].reset_index()
            keep["shift"] = keep["rating"] - keep.groupby(["item_id", "completion_index"])["rating"].transform("mean")
            items = sorted(keep["item_id"].unique())
            for p in sorted(keep["position"].unique()):
                at = keep[keep["position"] == p].groupby("item_id")["shift"].agg(["sum", "count"])
                at = at.reindex(items, fill_value=0)
                sums, counts = at["sum"].to_numpy(float), at["count"].to_numpy(float)
                v, lo, hi = self._ci(list(range(len(items))), lambda us, s=sums, c=counts: _ratio(s, c, us))
                self.out.append(result("position", "run", aspect, "mean_shift", v, lo, hi, int(counts.sum()),
                                       position=int(p)))
            pairs = _flip_pairs(a)
            if pairs:
                units = sorted({p[0] for p in pairs})
                grouped = {u: [p[1] for p in pairs if p[0] == u] for u in units}
                v, lo, hi = self._ci(units, lambda us: float(np.mean([f for u in us for f in grouped[u]])))
                self.out.append(result("position", "run", aspect, "flip_rate", v, lo, hi, len(pairs)))
            missing = len(a) - len(keep)
            if missing:
                self.out.append(result("position", "run", aspect, "not_compared", missing, n=len(a),
                                       note="rows whose text lacks a rating in some order"))

    # -- verbosity ------------------------------------------------------------------
    def verbosity(self) -> None:
        r = self.rows[(self.rows["probe"] == "rate")].dropna(subset=["rating"])
        for aspect, a in r.groupby("aspect", sort=True):
            by_item = {i: (g["response_chars"].to_numpy(float), g["rating"].to_numpy(float))
                       for i, g in a.groupby("item_id")}
            items = sorted(by_item)

            def overall(units):
                x = np.concatenate([by_item[u][0] for u in units])
                y = np.concatenate([by_item[u][1] for u in units])
                return _spearman(x, y)

            per_item = {u: _spearman(*by_item[u]) for u in items}
            varied = [u for u in items if per_item[u] is not None]
            v, lo, hi = self._ci(items, overall)
            self.out.append(result("verbosity", "run", aspect, "spearman", v, lo, hi, len(a)))
            v, lo, hi = self._ci(varied, lambda us: float(np.mean([per_item[u] for u in us])) if us else None)
            self.out.append(result("verbosity", "run", aspect, "within_instruction", v, lo, hi, len(varied),
                                   note="mean per-instruction Spearman over instructions whose ratings and "
                                        "lengths both vary"))

    # -- self-preference ------------------------------------------------------------
    def _gaps(self, probe: str) -> pd.DataFrame:
        r = self.rows[(self.rows["probe"] == probe) & (self.rows["set"] == "run")].dropna(subset=["rating"])
        own = r["model"] == self.self_model
        g = r.assign(own=own).groupby(["aspect", "item_id", "own"])["rating"].mean().unstack("own")
        if True not in g.columns or False not in g.columns:
            return pd.DataFrame(columns=["gap"])
        return (g[True] - g[False]).dropna().rename("gap").to_frame()

    def self_preference(self) -> None:
        if not self.self_model:
            return
        gaps, second = self._gaps("rate"), self._gaps("second_judge")
        for aspect in sorted({a for a, _ in gaps.index}):
            g = gaps.xs(aspect)["gap"]
            v, lo, hi = self._ci(list(g.index), lambda us, g=g: float(g.loc[us].mean()))
            self.out.append(result("self_preference", "run", aspect, "gap", v, lo, hi, len(g),
                                   note=f"own model {self.self_model}"))
            if len(second) and aspect in second.index.get_level_values(0):
                d = (g - second.xs(aspect)["gap"]).dropna()
                v, lo, hi = self._ci(list(d.index), lambda us, d=d: float(d.loc[us].mean()))
                self.out.append(result("self_preference", "run", aspect, "excess_over_second_judge", v, lo, hi,
                                       len(d)))

    # -- agreement with another rater -----------------------------------------------
    def _agreement(self, probe: str, set_: str, aspect: str, pairs: pd.DataFrame, note: str | None) -> None:
        """pairs: columns item_id, judge, other (numeric 1-5)."""
        by_item = {i: (g["judge"].to_numpy(float), g["other"].to_numpy(float)) for i, g in pairs.groupby("item_id")}
        items = sorted(by_item)

        def cat(us):
            return (np.concatenate([by_item[u][0] for u in us]), np.concatenate([by_item[u][1] for u in us]))

        def kappa(us):
            j, o = cat(us)
            return _kappa(np.rint(j).astype(int), np.rint(o).astype(int), "quadratic", [1, 2, 3, 4, 5])

        metrics = {
            "weighted_kappa": kappa,
            "spearman": lambda us: _spearman(*cat(us)),
            "exact": lambda us: float(np.mean(np.rint(cat(us)[0]) == np.rint(cat(us)[1]))),
            "within_one": lambda us: float(np.mean(np.abs(cat(us)[0] - cat(us)[1]) <= 1)),
            "mean_difference": lambda us: float(np.mean(cat(us)[1] - cat(us)[0])),
        }
        for name, fn in metrics.items():
            v, lo, hi = self._ci(items, fn)
            self.out.append(result(probe, set_, aspect, name, v, lo, hi, len(pairs), note=note))

    def second_judge(self) -> None:
        r = self.rows[self.rows["set"] == "run"]
        keys = ["item_id", "aspect", "completion_index"]
        first = r[r["probe"] == "rate"].dropna(subset=["rating"])[keys + ["rating"]]
        other = r[r["probe"] == "second_judge"]
        if other.empty:
            return
        name = other["judge_model"].iloc[0]
        pairs = first.merge(other.dropna(subset=["rating"])[keys + ["rating"]], on=keys, suffixes=("_j", "_o"))
        pairs = pairs.rename(columns={"rating_j": "judge", "rating_o": "other"})
        for aspect, a in pairs.groupby("aspect", sort=True):
            self._agreement("second_judge", "run", aspect, a, f"second judge {name}")

    # -- humans ---------------------------------------------------------------------
    def humans(self) -> None:
        h = self.rows[self.rows["probe"] == "human"]
        for set_, s in h.groupby("set", sort=True):
            if (s["n_texts"] == 2).all():
                self._pairwise(set_, s)
                continue
            for aspect, a in s.groupby("aspect", sort=True):
                rated = a.dropna(subset=["rating"]).rename(columns={"rating": "judge", "human_label": "other"})
                self._agreement("human", set_, aspect, rated, "human rating mapped to 1-5")
                self.out.append(result("human", set_, aspect, "not_compared", int(a["rating"].isna().sum()),
                                       n=len(a), note="judge answer unreadable or N/A"))

    def _pairwise(self, set_: str, s: pd.DataFrame) -> None:
        items = []
        for item, g in s.groupby("item_id", sort=True):
            means = g.groupby("completion_index")["rating"].apply(lambda x: x.mean() if x.notna().all() else np.nan)
            a, b = means.get(0, np.nan), means.get(1, np.nan)
            judge = None if np.isnan(a) or np.isnan(b) else 1 if a > b else 2 if b > a else 0
            first = g.iloc[0]
            items.append({"item": item, "judge": judge, "human": int(first["human_label"]),
                          "votes": list(first["human_votes"]) if first["human_votes"] is not None else [],
                          "baseline": first["baseline_label"]})
        units = list(range(len(items)))
        labels = [0, 1, 2]
        ci = self._ci

        def agree(us, key="judge"):
            return float(np.mean([items[u][key] is not None and str(items[u][key]) == str(items[u]["human"])
                                  for u in us]))

        def kappa(us):
            got = [items[u] for u in us if items[u]["judge"] is not None]
            return _kappa([g["judge"] for g in got], [g["human"] for g in got], None, labels)

        n = len(items)
        for metric, fn in (("agreement_with_majority", agree), ("kappa_with_majority", kappa)):
            v, lo, hi = ci(units, fn)
            self.out.append(result("human", set_, "preference", metric, v, lo, hi, n,
                                   note="judge: higher mean rating preferred; unreadable answer = miss"))
        self.out.append(result("human", set_, "preference", "judge_unreadable",
                               sum(i["judge"] is None for i in items), n=n))
        votes = [i["votes"] for i in items]
        if votes and all(len(v) >= 2 for v in votes):
            k = len(votes[0])
            pairs = list(combinations(range(k), 2))
            def raw(us):
                return float(np.mean([np.mean([votes[u][x] == votes[u][y] for u in us]) for x, y in pairs]))

            def kap(us):
                return float(np.mean([_kappa([votes[u][x] for u in us], [votes[u][y] for u in us], None, labels)
                                      or 0.0 for x, y in pairs]))

            for metric, fn in (("annotator_pairwise_agreement", raw), ("annotator_pairwise_kappa", kap)):
                v, lo, hi = ci(units, fn)
                self.out.append(result("human", set_, "preference", metric, v, lo, hi, n,
                                       note=f"mean over the {len(pairs)} annotator pairs"))
        if any(i["baseline"] is not None for i in items):
            v, lo, hi = ci(units, lambda us: agree(us, "baseline"))
            self.out.append(result("human", set_, "preference", "baseline_agreement_with_majority", v, lo, hi, n,
                                   note="the published gpt-3.5-turbo verdicts on the same rows; garbage = miss"))


def _ratio(sums: np.ndarray, counts: np.ndarray, units: list) -> float | None:
    idx = np.asarray(units, dtype=int)
    c = counts[idx].sum()
    return float(sums[idx].sum() / c) if c else None


def _flip_pairs(a: pd.DataFrame) -> list[tuple[str, int]]:
    """(item, reversed?) per strictly ranked pair and other order in which the pair swapped."""
    out = []
    rated = a.dropna(subset=["rating"])
    for item, g in rated.groupby("item_id"):
        base = g[g["variant"] == 0].set_index("completion_index")
        for v, alt in g[g["variant"] != 0].groupby("variant"):
            alt = alt.set_index("completion_index")
            for x, y in combinations(sorted(set(base.index) & set(alt.index)), 2):
                d0 = base.at[x, "rating"] - base.at[y, "rating"]
                swapped = (base.at[x, "position"] < base.at[y, "position"]) != (alt.at[x, "position"] < alt.at[y, "position"])
                if d0 and swapped:
                    dv = alt.at[x, "rating"] - alt.at[y, "rating"]
                    out.append((item, int(np.sign(dv) == -np.sign(d0))))
    return out
