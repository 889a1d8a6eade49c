"""One measured pipeline run, in its own process (started by bench/scale.py).

Inputs: a run config YAML, the path of the result JSON, and optionally a stage to profile.
Outputs: the result JSON: wall time of each stage (the time its runner took inside the
flow), of the whole flow call and of the process; peak RSS of this process overall and
per stage (sampled every 50 ms, plus the kernel's high-water mark), and the peak RSS of
the Prefect API server this process started; the stage summaries; and with --profile a
cProfile dump of that stage (`<result>.<stage>.prof`).

Run: python bench/scale_run.py CONFIG RESULT_JSON [--profile rate]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

T0 = time.monotonic()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from flows.runtime import set_task_threads, tune_gc  # noqa: E402

workers_set = "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS" in os.environ
set_task_threads()  # before Prefect is imported, as `ultrafeedback run` does


class Sampler(threading.Thread):
    """Peak RSS of this process (and, separately, of its children) since the last mark."""

    def __init__(self, period_s: float = 0.05):
        super().__init__(daemon=True)
        self.proc = psutil.Process()
        self.period_s = period_s
        self.peak = self.window_peak = self.children_peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        children, listed = [], 0.0
        while not self.stop.wait(self.period_s):
            rss = self.proc.memory_info().rss
            self.peak = max(self.peak, rss)
            self.window_peak = max(self.window_peak, rss)
            if time.monotonic() - listed > 2.0:  # listing walks /proc: not every tick
                children, listed = self.proc.children(recursive=True), time.monotonic()
            kids = 0
            for child in children:
                try:
                    kids += child.memory_info().rss
                except psutil.Error:
                    pass
            self.children_peak = max(self.children_peak, kids)

    def mark(self) -> int:
        peak, self.window_peak = self.window_peak, self.proc.memory_info().rss
        return peak


class ModelClock:
    """CPU seconds spent inside the scripted backends: the stand-in for model time.

    Thread CPU time, so a thread waiting for the GIL or for I/O is not counted; what is
    left of the process's CPU time is the pipeline's own work."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seconds = 0.0

    def wrap(self, cls, name: str) -> None:
        fn = getattr(cls, name)

        def timed(*args, **kwargs):
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - t
                with self.lock:
                    self.seconds += spent

        setattr(cls, name, timed)


def _cpu() -> float:
    """CPU seconds of this process so far, all threads (the Prefect server is another process)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(name: str, fn, out: dict, sampler: Sampler, profile: str | None, prof_path: str):
    def wrapper(cfg, store, *upstream):
        sampler.mark()
        t = time.monotonic()
        out.setdefault("_first_start", t)
        cpu = _cpu()
        if profile == name:
            import cProfile

            prof = cProfile.Profile()
            result = prof.runcall(fn, cfg, store, *upstream)
            prof.dump_stats(prof_path)
        else:
            result = fn(cfg, store, *upstream)
        out["_last_end"] = time.monotonic()
        out[name] = {"wall_s": round(out["_last_end"] - t, 3), "cpu_s": round(_cpu() - cpu, 3),
                     "peak_rss_mb": round(sampler.mark() / 2**20, 1), "summary": result.summary}
        return result

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("result")
    ap.add_argument("--profile", choices=["sample", "generate", "rate", "assemble"])
    args = ap.parse_args()

    sampler = Sampler()
    sampler.start()
    import flows.ultrafeedback
    from flows.config import load_config
    from flows.ultrafeedback import ultrafeedback

    imported_s = time.monotonic() - T0
    stages: dict[str, dict] = {}
    prof = f"{args.result}.{args.profile}.prof"
    for name in ("sample", "generate", "rate", "assemble"):  # the stage runners the flow calls
        runner = f"run_{name}"
        setattr(flows.ultrafeedback, runner, _timed(name, getattr(flows.ultrafeedback, runner), stages, sampler,
                                                    args.profile, prof))

    from tasks.backends.scripted import ScriptedBackend
    from tasks.rating.scripted import ScriptedJudge

    model = ModelClock()
    model.wrap(ScriptedBackend, "answer")  # one generated completion
    model.wrap(ScriptedJudge, "_answer")  # one judge answer
    cfg = load_config(args.config)
    tune_gc()  # as `ultrafeedback run` does before its flow
    cpu0 = _cpu()
    t = time.monotonic()
    ultrafeedback(config=cfg)
    end = time.monotonic()
    flow_s = end - t
    first, last = stages.pop("_first_start"), stages.pop("_last_end")
    sampler.stop.set()
    sampler.join()
    cpu = _cpu() - cpu0
    result = {
        "import_s": round(imported_s, 3),
        "flow_cpu_s": round(cpu, 3),  # this process, every thread, during the flow call
        "model_cpu_s": round(model.seconds, 3),  # of which inside the scripted backends
        "workers": os.environ["PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS"] + ("" if workers_set else " (default)"),
        "flow_s": round(flow_s, 3),
        "stages_s": round(sum(s["wall_s"] for s in stages.values()), 3),
        "flow_start_s": round(first - t, 3),  # flow call to the first stage: mostly the Prefect API server's start
        "flow_end_s": round(end - last, 3),  # last stage to the flow's return: manifest, run summary, flow end
        "process_s": round(time.monotonic() - T0, 3),
        "peak_rss_mb": round(max(sampler.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20, 1),
        "children_peak_rss_mb": round(sampler.children_peak / 2**20, 1),
        "stages": stages,
        "pid": os.getpid(),
    }
    Path(args.result).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
