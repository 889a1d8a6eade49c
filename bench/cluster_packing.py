"""Best packing of the 64-GPU rebuild: does any plan of a rich family reach a given makespan?

Run:  python bench/cluster_packing.py [--gpus 64] [--step 10] [--targets 1.15 1.16]
                                      [--time-limit 300] [--load-scale 1.0]

Inputs: the cluster simulation's work (bench/cluster_sim.py: the 14 GPU engines of the
original's pool, their simulated generation time on one replica, their load time and
tensor-parallel size), a GPU count, target makespans T as multiples of the ideal. Output:
per target, whether a plan of the family below finishes every engine's work by T
(`feasible`), provably none does (`infeasible`), or the solver ran out of time
(`undecided`), with the solve time and, for a feasible T, the plan's shape. One JSON line
per target, then a table.

Why: the planner (`tasks.generation.schedule_elastic`) is a heuristic, and
`schedule.lower_bound_s` ignores how servers fit together on GPUs. This asks HiGHS (through
scipy's `milp`) for the best plan in which every GPU holds at most two servers, one after
the other. Per group of GPUs of one width w (1, 2 or 4; any such groups fill 8-GPU nodes,
since every width divides 8), the plan is a number of copies of these shapes:
- one server of engine e from 0 to T (w = e's tp): T - load_e of generation;
- two servers of engines e and f of width w, one after the other: T - load_e - load_f of
  generation between them, split freely (a variable each);
- a wide server (tp 2 or 4) from 0 to s, then servers of smaller tp from s to T on its
  GPUs, or the reverse (narrow first, wide from s): s on a grid of `--step` seconds.
An engine's work is divisible (its servers share one request queue, as in elastic mode),
so a plan is feasible when every engine gets at least its work. The family leaves out
three or more servers on one GPU and split times off the grid, so "infeasible" means no
plan of this family, not no plan at all.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster_sim import build, workload  # noqa: E402
from tasks.generation.schedule import ideal_s, lower_bound_s  # noqa: E402
from tasks.generation.schedule_plan import Job  # noqa: E402


class Model:
    """Columns of a feasibility MILP, built shape by shape (sparse rows by name)."""

    def __init__(self):
        self.names, self.integral = [], []
        self.rows: dict[tuple, dict[int, float]] = {}

    def var(self, name: str, integral: bool) -> int:
        self.names.append(name)
        self.integral.append(1 if integral else 0)
        return len(self.names) - 1

    def add(self, row: tuple, var: int, coef: float) -> None:
        self.rows.setdefault(row, {})[var] = self.rows.get(row, {}).get(var, 0.0) + coef


def build_model(jobs: list[Job], gpus: int, target: float, step: float) -> tuple[Model, dict]:
    """Rows: ("work", e) >= work_e; ("gpus",) <= gpus; ("free", kind, s, width) >= 0 (the
    narrow servers of a wide-first or narrow-first shape fit the wide ones' GPUs); ("pair", i) <= 0."""
    m, by_tp = Model(), {}
    for j in jobs:
        by_tp.setdefault(j.tp, []).append(j)
    for j in jobs:  # one server the whole run
        x = m.var(f"one {j.engine_id}", True)
        m.add(("gpus",), x, j.tp)
        m.add(("work", j.engine_id), x, target - j.load_s)
    for tp, same in by_tp.items():  # two servers of one width, one after the other
        for i, a in enumerate(same):
            for b in same[i + 1:]:
                x = m.var(f"pair {a.engine_id} then {b.engine_id}", True)
                m.add(("gpus",), x, tp)
                for j in (a, b):
                    y = m.var(f"pair share {j.engine_id}", False)
                    m.add(("work", j.engine_id), y, 1.0)
                    m.add(("pair", x), y, 1.0)
                m.add(("pair", x), x, -(target - a.load_s - b.load_s))
    s = step
    while s < target - step / 2:
        for kind in ("wide first", "narrow first"):
            wide_len, narrow_len = (s, target - s) if kind == "wide first" else (target - s, s)
            for tp in (2, 4):
                for j in by_tp.get(tp, []):
                    if wide_len > j.load_s:
                        x = m.var(f"{kind} {j.engine_id} s={s:g}", True)
                        m.add(("gpus",), x, tp)
                        m.add(("work", j.engine_id), x, wide_len - j.load_s)
                        m.add(("free", kind, s, 1), x, tp)  # GPUs for narrow servers
                        if tp == 4:
                            m.add(("free", kind, s, 2), x, 2)  # pairs of them for tp-2 servers
            for tp in (1, 2):
                for j in by_tp.get(tp, []):
                    if narrow_len > j.load_s:
                        z = m.var(f"{kind} narrow {j.engine_id} s={s:g}", True)
                        m.add(("work", j.engine_id), z, narrow_len - j.load_s)
                        m.add(("free", kind, s, 1), z, -tp)
                        if tp == 2:
                            m.add(("free", kind, s, 2), z, -1)
        s += step
    bounds = {"work": {j.engine_id: j.work_s for j in jobs}}
    return m, bounds


def solve(jobs: list[Job], gpus: int, target: float, step: float, time_limit: float) -> dict:
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    m, bounds = build_model(jobs, gpus, target, step)
    keys = list(m.rows)
    a = lil_matrix((len(keys), len(m.names)))
    lo, hi = np.zeros(len(keys)), np.zeros(len(keys))
    for r, key in enumerate(keys):
        for v, coef in m.rows[key].items():
            a[r, v] = coef
        kind = key[0]
        if kind == "work":
            lo[r], hi[r] = bounds["work"][key[1]], np.inf
        else:
            lo[r], hi[r] = {"gpus": (-np.inf, gpus), "free": (0.0, np.inf), "pair": (-np.inf, 0.0)}[kind]
    gpu_cost = np.zeros(len(m.names))
    for v, coef in m.rows[("gpus",)].items():
        gpu_cost[v] = coef
    started = time.perf_counter()
    res = milp(gpu_cost, constraints=LinearConstraint(a.tocsr(), lo, hi), integrality=np.array(m.integral),
               bounds=Bounds(0, np.inf), options={"time_limit": time_limit})
    out = {"target_s": round(target, 1), "variables": len(m.names), "solve_s": round(time.perf_counter() - started, 1)}
    if res.x is not None and res.status in (0, 1):
        out["result"] = "feasible"
        out["gpus_used"] = round(res.fun)
        out["shapes"] = {m.names[v]: round(res.x[v]) for v in range(len(m.names))
                         if m.integral[v] and res.x[v] > 0.5}
    else:
        out["result"] = "infeasible" if res.status == 2 else "undecided"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--step", type=float, default=10.0, help="grid of split times, seconds")
    ap.add_argument("--targets", type=float, nargs="+", default=[1.15, 1.16], help="multiples of the ideal")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per target")
    ap.add_argument("--load-scale", type=float, default=1.0)
    args = ap.parse_args(argv)
    parts, requests = workload()
    _, sims = build(parts, requests, args.load_scale)
    jobs = [Job(s.engine_id, s.tp, sum(s.parts) / s.tps, s.load_s) for s in sims]  # the simulated work
    ideal, bound = ideal_s(jobs, args.gpus), lower_bound_s(jobs, args.gpus)
    print(json.dumps({"gpus": args.gpus, "ideal_s": round(ideal, 1), "bound_s": round(bound, 1),
                      "bound_vs_ideal": round(bound / ideal, 3)}), flush=True)
    rows = []
    for ratio in args.targets:
        row = {"vs_ideal": ratio, **solve(jobs, args.gpus, ratio * ideal, args.step, args.time_limit)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| T / ideal | T (s) | best two-server-per-GPU plan | solve (s) |\n|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['vs_ideal']:g} | {r['target_s']:.0f} | {r['result']} | {r['solve_s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
