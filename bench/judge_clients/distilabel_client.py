"""Judge goodput client: distilabel 1.5.3's UltraFeedback task on OpenAILLM(base_url=...).

Runs inside bench/.venvs/distilabel (distilabel cannot share the project's environment).
Inputs: --folder/instructions.jsonl (instruction + four generations), the server URL.
Output: one JSON line with the counts it saw. One UltraFeedback step per aspect, each
fed every instruction: the same per-(instruction, aspect) calls as ours, with distilabel's
own prompt wording. By default everything else is distilabel's defaults (input_batch_size
50, the OpenAI SDK's retries with max_retries 6), the way a user would run it; --batch-size
and --max-retries give the tuned variant. distilabel has no RPM/TPM limiter of its own.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import UltraFeedback

ASPECTS = ("instruction-following", "honesty", "truthfulness", "helpfulness")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--folder", required=True)
    ap.add_argument("--rpm", type=int)
    ap.add_argument("--tpm", type=int)
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--batch-size", type=int, default=None, help="input_batch_size per step (default: distilabel's 50)")
    ap.add_argument("--max-retries", type=int, default=None, help="OpenAI SDK retries (default: distilabel's 6)")
    args = ap.parse_args()
    step_kw = {"input_batch_size": args.batch_size} if args.batch_size else {}
    llm_kw = {"max_retries": args.max_retries} if args.max_retries is not None else {}
    rows = [json.loads(line) for line in (Path(args.folder) / "instructions.jsonl").read_text().splitlines()]
    t0 = time.monotonic()
    with Pipeline(name="judge-goodput", cache_dir=str(Path(args.folder) / "distilabel-cache")) as pipeline:
        load = LoadDataFromDicts(data=rows)
        for aspect in ASPECTS:
            llm = OpenAILLM(model="judge", base_url=args.url, api_key="sk-bench", **llm_kw,
                            generation_kwargs={"max_new_tokens": 1024, "temperature": 0.0, "top_p": 0.6})
            load >> UltraFeedback(name=f"uf-{aspect}", aspect=aspect, llm=llm, **step_kw)
    distiset = pipeline.run(use_cache=False)
    rows_out = [row for name in distiset.keys() for row in distiset[name]["train"]]
    rated = sum(any(r is not None for r in (row.get("ratings") or [])) for row in rows_out)
    print(json.dumps({"rows": len(rows_out), "rows_with_a_rating": rated, "seconds": time.monotonic() - t0}))


if __name__ == "__main__":
    main()
