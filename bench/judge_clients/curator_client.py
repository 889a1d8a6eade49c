"""Judge goodput client: bespokelabs-curator 0.1.31, backend "openai" with base_url.

Runs inside bench/.venvs/curator (telemetry off: TELEMETRY_ENABLED=false). Inputs:
--folder/requests.jsonl (the exact chat bodies our rate stage sends), the server URL and
the same RPM/TPM limits our client is given. Output: one JSON line with the counts it saw.

tiktoken cannot fetch cl100k_base without internet access, and curator needs it to count
prompt tokens; the encoding is replaced with a 4-characters-per-token count, the same
estimate our limiter falls back to on such a machine.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


class _FourChars:
    def encode(self, text: str, disallowed_special=()) -> list[int]:
        return [0] * math.ceil(len(text) / 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--folder", required=True)
    ap.add_argument("--rpm", type=int, required=True)
    ap.add_argument("--tpm", type=int, required=True)
    ap.add_argument("--concurrency", type=int)
    args = ap.parse_args()

    from bespokelabs import curator
    from bespokelabs.curator.request_processor.online import openai_online_request_processor as oorp
    from datasets import Dataset

    oorp.OpenAIOnlineRequestProcessor.get_token_encoding = lambda self: _FourChars()

    class Judge(curator.LLM):
        def prompt(self, row):
            return json.loads(row["messages"])

        def parse(self, row, response):
            return {"custom_id": row["custom_id"], "answer": response}

    reqs = [json.loads(line) for line in (Path(args.folder) / "requests.jsonl").read_text().splitlines()]
    ds = Dataset.from_list([{"custom_id": r["custom_id"], "messages": json.dumps(r["body"]["messages"])} for r in reqs])
    judge = Judge(model_name="judge", backend="openai",
                  generation_params={"temperature": 0.0, "top_p": 0.6, "max_tokens": 1024},
                  backend_params={"base_url": args.url, "api_key": "sk-bench", "max_requests_per_minute": args.rpm,
                                  "max_tokens_per_minute": args.tpm, "require_all_responses": False})
    t0 = time.monotonic()
    out = judge(ds)
    rows = out.dataset if hasattr(out, "dataset") else out
    print(json.dumps({"answered_rows": len(rows), "seconds": time.monotonic() - t0}))


if __name__ == "__main__":
    main()
