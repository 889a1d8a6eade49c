"""Token estimates and rate-limit header parsing for the judge's limiter.

Inputs: chat messages and a model name; HTTP response headers. Outputs: a prompt token
estimate (tiktoken for OpenAI model names when its encoding loads offline, else 4
characters per token) and the wait a 429 asks for. Pure functions, no state.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Mapping

log = logging.getLogger(__name__)

_OPENAI_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt", "text-davinci")


@lru_cache(maxsize=None)
def _encoding(model: str):
    """tiktoken's encoding for an OpenAI model, or None when unknown or not loadable offline.
    The load runs in a daemon thread with a deadline: tiktoken downloads without a timeout."""
    if not model.lower().startswith(_OPENAI_PREFIXES):
        return None
    box: list = []

    def load() -> None:
        try:
            import tiktoken
            box.append(tiktoken.encoding_for_model(model))
        except Exception as exc:  # unknown model, no network, no cache
            log.debug("tiktoken unavailable for %s (%s); estimating 4 chars per token", model, type(exc).__name__)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(10.0)
    return box[0] if box else None


def estimate_prompt_tokens(messages: list[dict], model: str = "") -> int:
    enc = _encoding(model) if model else None
    n = 3
    for m in messages:
        content = m.get("content") or ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        n += 4 + (len(enc.encode(content, disallowed_special=())) if enc else math.ceil(len(content) / 4))
    return n


def parse_duration(value: str | None) -> float | None:
    """OpenAI's reset format (`20ms`, `1.5s`, `6m0s`, `1h2m3s`) or plain seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    total, num = 0.0, ""
    i = 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            num += ch
        else:
            unit = "ms" if value.startswith("ms", i) else ch
            total += float(num or 0) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}.get(unit, 0)
            num, i = "", i + len(unit) - 1
        i += 1
    return total


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a 429 asks for: retry-after-ms, then Retry-After (seconds or HTTP date), then
    the reset time of whichever limit is exhausted."""
    h = {k.lower(): v for k, v in headers.items()}
    if h.get("retry-after-ms"):
        try:
            return float(h["retry-after-ms"]) / 1000
        except ValueError:
            pass
    if h.get("retry-after"):
        try:
            return float(h["retry-after"])
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(h["retry-after"]).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    resets = [parse_duration(h.get(f"x-ratelimit-reset-{k}")) for k in ("requests", "tokens")
              if h.get(f"x-ratelimit-remaining-{k}") in ("0", None) and h.get(f"x-ratelimit-reset-{k}")]
    resets = [r for r in resets if r is not None]
    return max(resets) if resets else None
