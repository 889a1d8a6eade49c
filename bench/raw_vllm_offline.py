"""Raw vLLM baseline: the offline engine (LLM.chat) driven directly, no pipeline around it.

Runs inside the vLLM environment. Inputs: a model folder, an OpenAI Batch JSONL file of
chat requests (the very requests the generation stage sends), engine settings. Output: a
JSON file with load time, generation time and generated-token count.

Usage: python bench/raw_vllm_offline.py MODEL REQUESTS.jsonl OUT.json [--max-model-len N]
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("requests")
    ap.add_argument("out")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()

    started = time.monotonic()
    from vllm import LLM, SamplingParams

    bodies = [json.loads(line)["body"] for line in open(args.requests, encoding="utf-8") if line.strip()]
    llm = LLM(model=args.model, max_model_len=args.max_model_len, dtype=args.dtype, enforce_eager=True)
    loaded = time.monotonic()
    extra = ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos")
    params = [SamplingParams(temperature=b["temperature"], top_p=b["top_p"], max_tokens=b["max_tokens"],
                             seed=b.get("seed"), stop=b.get("stop"), **{k: b[k] for k in extra if k in b})
              for b in bodies]
    outputs = llm.chat([b["messages"] for b in bodies], params, use_tqdm=False)
    done = time.monotonic()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump({"requests": len(bodies), "completion_tokens": tokens, "load_s": loaded - started,
                   "generate_s": done - loaded, "total_s": done - started}, fh)


if __name__ == "__main__":
    main()
