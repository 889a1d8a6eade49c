"""Benchmark: the fixed cost of an `ultrafeedback run` that has nothing left to do.

Inputs: a run config (default: tests/fixtures/configs/scripted.yaml), the number of reruns,
and optionally another source tree to compare with (`--baseline DIR`, e.g. an exported
older commit). Outputs: one JSON line per measurement and a summary: the wall time of a
rerun of the finished run (every shard cached), the CPU time of the CLI process and its
children, and its parts measured alone: importing the flow modules, and the temporary
Prefect server from start to its first healthy answer (this project's `flows.api_server`,
and Prefect's own temporary server for comparison).

The run is made once first (not timed) with a PREFECT_HOME kept for the whole benchmark,
as a user's ~/.prefect is; PREFECT_API_URL is unset, so every rerun starts a server.
Variants are interleaved, so a change in the machine's load hits them alike.

Usage:
  python bench/cli_fixed_cost.py [--config FILE] [--runs 3] [--baseline DIR] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTED = ROOT / "tests" / "fixtures" / "configs" / "scripted.yaml"

SERVER_ALONE = """
import time
t = time.monotonic()
from flows.api_server import start
s = start()
s.wait_ready()
print(time.monotonic() - t)
s.stop()
"""
PREFECT_SERVER_ALONE = """
import time
t = time.monotonic()
from prefect.server.api.server import SubprocessASGIServer
s = SubprocessASGIServer()
s.start(timeout=120)
print(time.monotonic() - t)
s.stop()
"""
IMPORTS = """
import time
t = time.monotonic()
import flows.ultrafeedback, flows.backfill, flows.config
print(time.monotonic() - t)
"""


def _env(tree: Path, home: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "PREFECT_HOME": str(home), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    return env


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    cpu, t = _children_cpu(), time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    return time.monotonic() - t, _children_cpu() - cpu, proc


def rerun(tree: Path, home: Path, config: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", config, "--out", str(out), "--no-progress"]
    wall, cpu, proc = _timed(cmd, _env(tree, home), tree)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: rc {proc.returncode}\n{proc.stderr[-3000:]}")
    stages = json.loads(proc.stdout)["stages"]
    redone = {s: {k: v for k, v in info["shards"].items() if k in ("written", "failed") and v}
              for s, info in stages.items() if info.get("shards")}
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "redone": {s: v for s, v in redone.items() if v}}


def alone(tree: Path, home: Path, code: str) -> dict:
    wall, cpu, proc = _timed([sys.executable, "-c", code], _env(tree, home), tree)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return {"inner_s": round(float(proc.stdout.strip().splitlines()[-1]), 2), "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(SCRIPTED))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline", help="another source tree to compare with (its own flows/ package)")
    ap.add_argument("--work", help="folder for the runs and PREFECT_HOME (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="uf-cli-cost-")).resolve()
    trees = {"this tree": ROOT} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
    home = work / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    parts: dict[str, list[dict]] = {"imports": [], "server (flows.api_server)": [], "server (Prefect's own)": []}
    for name, tree in trees.items():  # the first run does the work; it is not timed
        out = work / f"run-{name.replace(' ', '-')}"
        shutil.rmtree(out, ignore_errors=True)
        rerun(tree, home, args.config, out)
    for i in range(args.runs):
        for name, tree in trees.items():
            r = rerun(tree, home, args.config, work / f"run-{name.replace(' ', '-')}")
            runs[name].append(r)
            print(json.dumps({"rerun": name, **r}), flush=True)
        for part, code in (("imports", IMPORTS), ("server (flows.api_server)", SERVER_ALONE),
                           ("server (Prefect's own)", PREFECT_SERVER_ALONE)):
            r = alone(ROOT, home, code)
            parts[part].append(r)
            print(json.dumps({"part": part, **r}), flush=True)
    summary = {"load_avg": os.getloadavg(), "cpus": os.cpu_count(),
               "reruns": {n: {"median_wall_s": statistics.median(r["wall_s"] for r in rs),
                              "median_cpu_s": statistics.median(r["cpu_s"] for r in rs)} for n, rs in runs.items()},
               "parts": {p: {"median_s": statistics.median(r["inner_s"] for r in rs)} for p, rs in parts.items()}}
    print(json.dumps(summary, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
