"""Offline vLLM runner: an OpenAI Batch JSONL file through `LLM.chat`, in the vLLM environment.

Run as a script by the engine's Python (it imports nothing from this project, because
vLLM lives in its own environment). The offline engine schedules the whole file at once,
which is vLLM's highest-throughput path; `run_batch` is the alternative.

Inputs: `-i requests.jsonl` (custom_id, method, url, body with messages and sampling),
`-o results.jsonl`, vLLM engine arguments (`--model`, `--served-model-name`, `--dtype`,
`--max-model-len`, `--enforce-eager`, ... exactly as the server takes them) and an optional
`--chat-template` file. Outputs: one OpenAI Batch output line per request, in input
order: a chat.completion body with usage and finish_reason, or an error for a request
that cannot run (a prompt longer than the context); `--timings FILE` gets load and
generation seconds.
"""
from __future__ import annotations

import json
import sys
import time
import uuid

# vLLM's own sampling fields that its server also accepts in a chat request body.
VLLM_EXTRA = ("top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos")


def _sampling(SamplingParams, body: dict):
    return SamplingParams(
        n=1, temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
        max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
        stop=body.get("stop"), seed=body.get("seed"),
        presence_penalty=body.get("presence_penalty") or 0.0,
        frequency_penalty=body.get("frequency_penalty") or 0.0,
        **{k: body[k] for k in VLLM_EXTRA if k in body},
    )


def _ok(cid: str, body: dict, out) -> dict:
    done = out.outputs[0]
    usage = {"prompt_tokens": len(out.prompt_token_ids or []), "completion_tokens": len(done.token_ids)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    completion = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                     "finish_reason": done.finish_reason}],
        "usage": usage,
    }
    return {"id": f"batch-{cid}", "custom_id": cid, "error": None,
            "response": {"status_code": 200, "request_id": completion["id"], "body": completion}}


def _error(cid: str, code: str, message: str) -> dict:
    return {"id": f"batch-{cid}", "custom_id": cid, "response": None, "error": {"code": code, "message": message}}


def main(argv: list[str]) -> int:
    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    parser.add_argument("-i", "--input-file", required=True)
    parser.add_argument("-o", "--output-file", required=True)
    parser.add_argument("--chat-template", default=None)
    parser.add_argument("--timings", default=None)
    EngineArgs.add_cli_args(parser)
    args = parser.parse_args(argv)
    started = time.monotonic()
    engine_args = EngineArgs.from_cli_args(args)
    template = open(args.chat_template, encoding="utf-8").read() if args.chat_template else None

    reqs = [json.loads(line) for line in open(args.input_file, encoding="utf-8") if line.strip()]
    llm = LLM(**{name: getattr(engine_args, name) for name in vars(engine_args)})
    loaded = time.monotonic()

    tokenizer = llm.get_tokenizer()
    limit = llm.llm_engine.model_config.max_model_len
    results: dict[str, dict] = {}
    runnable = []
    for req in reqs:
        body = req["body"]
        ids = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=True,
                                            chat_template=template)
        n = len(ids["input_ids"] if isinstance(ids, dict) else ids)
        if n >= limit:
            results[req["custom_id"]] = _error(req["custom_id"], "context_length_exceeded",
                                               f"prompt has {n} tokens, max_model_len is {limit}")
        else:
            runnable.append(req)
    outputs = llm.chat([r["body"]["messages"] for r in runnable],
                       [_sampling(SamplingParams, r["body"]) for r in runnable],
                       use_tqdm=False, chat_template=template) if runnable else []
    for req, out in zip(runnable, outputs):
        results[req["custom_id"]] = _ok(req["custom_id"], req["body"], out)
    done = time.monotonic()

    tmp = args.output_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for req in reqs:
            fh.write(json.dumps(results[req["custom_id"]], ensure_ascii=False) + "\n")
    import os

    os.replace(tmp, args.output_file)
    if args.timings:
        tokens = sum(r["response"]["body"]["usage"]["completion_tokens"] for r in results.values() if r["response"])
        with open(args.timings, "w", encoding="utf-8") as fh:
            json.dump({"load_s": loaded - started, "generate_s": done - loaded, "requests": len(reqs),
                       "completion_tokens": tokens}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
