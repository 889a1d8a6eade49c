"""Process settings of a pipeline run: how many shard tasks run at once, and the garbage collector.

Inputs: the environment. Outputs: `set_task_threads()`, called before Prefect is imported
(the CLI does, at import; so does the scale benchmark, which stands in for it), and
`tune_gc()`, called once before a flow runs.

- Task threads: Prefect's thread pool is unbounded unless PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS
  says otherwise, so every shard task of a stage started at once, each holding its shard's
  prompts and answers: 3.2 GB at 32,000 instructions against 1.4 GB with 4 threads, and no
  faster, since the stages' Python work shares one interpreter lock (at 63,967 instructions
  4 threads even took 14 % less CPU than 8). The default set here is half the CPU count,
  at least 4 and at most 16, so a many-core GPU machine still runs one engine per GPU at
  once; a value already in the environment wins. Engine tasks do not count against it:
  they run on a thread pool of their own, one thread each (flows/stage_generate.py,
  `engine_runner`), so the merges and rate tasks keep these threads while engines generate.
- Garbage collector: the rate stage allocates millions of short-lived containers per run, and
  with CPython's default gen-0 threshold (700) the collector ran thousands of times per shard,
  each pass also walking everything alive (the modules Prefect, pyarrow and pandas import:
  about 200,000 objects). Freezing what exists after the imports (it is never garbage) and
  collecting young objects every 20,000 allocations instead of 700 cut one rate shard's CPU
  by about a third in a measurement (docs/benchmarks.md, Scale). Reference counting still
  frees everything that is not in a cycle at once; cycles are still collected, only later.
"""
from __future__ import annotations

import gc
import os

THREADS_ENV = "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS"
GC_THRESHOLD = (20_000, 10, 10)
_tuned = False


def set_task_threads() -> None:
    """Bound Prefect's task thread pool (see the module docstring) unless the environment does.

    Prefect reads its settings when it is imported: call this first."""
    os.environ.setdefault(THREADS_ENV, str(default_task_threads()))


def default_task_threads(cpus: int | None = None) -> int:
    """Half the CPU count, at least 4, at most 16 (see the module docstring)."""
    return max(4, min(16, (cpus or os.cpu_count() or 2) // 2))


def tune_gc() -> None:
    """Freeze the objects built so far and collect less often (see the module docstring). Idempotent."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    gc.collect()  # what is garbage now is collected, not frozen forever
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
