"""Benchmark: the whole pipeline at the original's scale, on instant backends.

Inputs: sizes (instructions per run; 63,967 is the original release), the judge (the
in-process scripted judge, or the OpenAI-protocol test server over real HTTP with limits
far above the load), the shard size. Generation always uses the instant scripted backend
(4 completions per instruction from a pool of 4), so what is measured is the pipeline's
own work: sampling, planning, request building, journaling, parsing, Parquet shards,
Prefect task runs, the join, pairs, card and report.
Outputs: one JSON line per run on stdout, all runs in `--out` (JSON), and a markdown table
(`--markdown`) for docs/benchmarks.md. Every run is checked complete (instructions,
completions and rating rows as planned, no failed shard) before it is reported.

Each run is a fresh process (bench/scale_run.py) with a fresh PREFECT_HOME, so the
temporary Prefect API server starts cold every time, as it does for `ultrafeedback run`.
The instruction sets are numbered variants of the bundled real rows (bench/scale_data.py).

Usage:
  python bench/scale.py [--sizes 8000,16000,32000,63967] [--judge scripted,http]
                        [--shard-size 1000] [--work DIR] [--profile rate] [--out FILE] [--markdown]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import scale_data  # noqa: E402

DEFAULT_WORK = ROOT / "bench" / "results" / "scale"


def start_judge_server(timeout_s: float) -> tuple[subprocess.Popen, str]:
    """The test server as its own process, limits far above what one client can send."""
    cmd = [sys.executable, str(ROOT / "tests/servers/openai_server.py"), "--port", "0", "--rpm", "100000000",
           "--tpm", "100000000000", "--max-seconds", str(timeout_s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return proc, proc.stdout.readline().strip()


def server_stats(url: str) -> dict:
    from tests.servers.fixtures import get_stats

    s = get_stats(url)
    return {k: s[k] for k in ("requests", "answered", "by_status", "rate_limited", "max_in_flight",
                              "prompt_tokens", "completion_tokens")} | {"duplicates": len(s["duplicates"])}


def check_complete(result: dict, n: int) -> list[str]:
    """What is missing from a run's outputs (empty when it is complete)."""
    st = result["stages"]
    problems = []
    for stage in ("sample", "generate", "rate", "assemble"):
        failed = st.get(stage, {}).get("summary", {}).get("shards", {}).get("failed", 1)
        if failed:
            problems.append(f"{stage}: {failed} failed shards")
    got = {"instructions": st["sample"]["summary"].get("instructions"),
           "completions": st["generate"]["summary"].get("completions"),
           "ratings": st["rate"]["summary"].get("ratings")}
    want = {"instructions": n, "completions": 4 * n, "ratings": 4 * n * 5}
    problems += [f"{k}: {got[k]} != {want[k]}" for k in want if got[k] != want[k]]
    return problems


def run_one(n: int, judge: str, args) -> dict:
    data_dir = Path(args.work) / f"data-{n}"
    t = time.monotonic()
    sources = scale_data.build(n, data_dir)
    prepare_s = time.monotonic() - t
    out_dir = Path(args.work) / f"run-{n}-{judge}"
    shutil.rmtree(out_dir, ignore_errors=True)
    server, url = (None, None)
    if judge == "http":
        server, url = start_judge_server(args.timeout_s + 60)
    home = tempfile.mkdtemp(prefix="uf-scale-prefect-")
    try:
        cfg = scale_data.config(n, sources, str(out_dir), judge, url, args.shard_size, plots=not args.no_plots)
        cfg_path = scale_data.write_config(Path(args.work) / f"config-{n}-{judge}.yaml", cfg)
        result_path = Path(args.work) / f"result-{n}-{judge}.json"
        result_path.unlink(missing_ok=True)
        env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PYTHONPATH": str(ROOT)}
        env.pop("PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS", None)
        if args.workers:  # else scale_run.py applies the CLI's default (flows/runtime.py)
            env["PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS"] = str(args.workers)
        cmd = [sys.executable, str(ROOT / "bench/scale_run.py"), str(cfg_path), str(result_path)]
        if args.profile:
            cmd += ["--profile", args.profile]
        t = time.monotonic()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=args.timeout_s, capture_output=True, text=True)
        wall = time.monotonic() - t
        if proc.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"run {n}/{judge} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
        result = json.loads(result_path.read_text())
        result.update(n=n, judge=judge, shard_size=args.shard_size, wall_s=round(wall, 3), load_avg=os.getloadavg(),
                      prepare_data_s=round(prepare_s, 3), output_mb=round(_du(out_dir) / 2**20, 1))
        if url:
            result["server"] = server_stats(url)
        problems = check_complete(result, n)
        if url and result["server"]["duplicates"]:
            problems.append(f"server answered {result['server']['duplicates']} requests twice")
        result["complete"] = not problems
        result["problems"] = problems
        return result
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def markdown(results: list[dict]) -> str:
    """One row per run; stage cells are "wall (CPU of the flow process)". "bookkeeping" = the
    four stages' wall time less the CPU time spent inside the scripted backends (the
    stand-in for model time); with the HTTP judge the judge's time is in the server process
    and not subtracted."""
    head = ("| judge | task threads | instructions | shards per stage | process wall | Prefect start | sample | generate "
            "| rate | assemble | stages | model stand-in CPU | bookkeeping | per 1k instr. | peak RSS flow process "
            "| peak RSS Prefect server | complete |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in results:
        st = r["stages"]
        shards = sum(st["sample"]["summary"]["shards"].values())
        model = r["model_cpu_s"] if r["judge"] == "scripted" else 0.0
        book = r["stages_s"] - model
        lines.append(
            f"| {r['judge']} | {r['workers']} | {r['n']:,} | {shards} | {r['wall_s']:.1f} s | {r['flow_start_s']:.1f} s | "
            + " | ".join(f"{st[s]['wall_s']:.1f} s ({st[s]['cpu_s']:.1f})" for s in ("sample", "generate", "rate", "assemble"))
            + f" | {r['stages_s']:.1f} s ({sum(st[s]['cpu_s'] for s in st):.1f}) | {r['model_cpu_s']:.1f} s "
            f"| {book:.1f} s | {book / r['n'] * 1000:.2f} s "
            f"| {r['peak_rss_mb']:,.0f} MB | {r['children_peak_rss_mb']:,.0f} MB "
            f"| {'yes' if r['complete'] else 'NO: ' + '; '.join(r['problems'])} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="8000,16000,32000,63967")
    ap.add_argument("--judge", default="scripted", help="comma-separated: scripted, http")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--workers", type=int, help="Prefect's task threads (default: the CLI's, flows/runtime.py)")
    ap.add_argument("--work", default=str(DEFAULT_WORK), help="data, configs, results and (with --keep) outputs")
    ap.add_argument("--profile", choices=["sample", "generate", "rate", "assemble"], help="cProfile one stage")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep each run's output folder")
    ap.add_argument("--timeout-s", type=float, default=3600)
    ap.add_argument("--out", help="write all results here (JSON)")
    ap.add_argument("--markdown", action="store_true", help="print the markdown table at the end")
    args = ap.parse_args()
    args.work = str(Path(args.work).resolve())  # configs name their files absolutely
    Path(args.work).mkdir(parents=True, exist_ok=True)
    results = []
    for judge in [j.strip() for j in args.judge.split(",") if j.strip()]:
        for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
            r = run_one(n, judge, args)
            results.append(r)
            print(json.dumps({k: r[k] for k in ("n", "judge", "workers", "wall_s", "flow_s", "flow_start_s", "stages_s",
                                                 "model_cpu_s", "flow_cpu_s", "peak_rss_mb", "children_peak_rss_mb",
                                                 "complete")}
                             | {s: r["stages"][s]["wall_s"] for s in r["stages"]}), flush=True)
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "load_avg_at_end": os.getloadavg(), "command": " ".join(sys.argv)}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "runs": results}, indent=1, default=str))
    if args.markdown:
        print(markdown(results))


if __name__ == "__main__":
    main()
