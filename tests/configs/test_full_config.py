"""The full-size config: it validates (without its source files), and every chat template
it names renders a single-turn prompt the way vLLM renders one (a sandboxed Jinja
environment, messages + add_generation_prompt + bos/eos tokens)."""
from __future__ import annotations

from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flows.plan import load_plan_config

ROOT = Path(__file__).resolve().parents[2]
CFG = load_plan_config(str(ROOT / "configs" / "ultrafeedback.yaml"))
TEMPLATED = [m for m in CFG.generation.models if m.chat_template]
SYSTEM = "Answer the question as well as you can."
USER = "What is the boiling point of water at the top of Mount Everest?"


def render(path: str, messages: list[dict]) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string((ROOT / path).read_text(encoding="utf-8"))
    return template.render(messages=messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")


def test_pool_is_the_originals_open_and_hosted_models():
    names = {m.name for m in CFG.generation.models}
    assert len(names) == 16 and "bard" not in names
    assert {m.name for m in CFG.generation.models if m.serve == "openai"} == {"gpt-4", "gpt-3.5-turbo"}
    assert len(TEMPLATED) == 14 and all(m.serve == "vllm_batch" for m in TEMPLATED)


@pytest.mark.parametrize("entry", TEMPLATED, ids=lambda m: m.name)
def test_chat_template_renders_system_and_user_turn(entry):
    with_system = render(entry.chat_template, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}])
    assert SYSTEM in with_system and USER in with_system
    assert with_system.index(SYSTEM) < with_system.index(USER)
    plain = render(entry.chat_template, [{"role": "user", "content": USER}])
    assert USER in plain and SYSTEM not in plain
    # The prompt ends where the assistant's answer starts (no answer text, no end token after it).
    assert not with_system.rstrip().endswith("</s>")


@pytest.mark.parametrize("name, expected", [
    ("llama-2-7b-chat", f"<s>[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n{USER} [/INST]"),
    ("vicuna-33b", f"{SYSTEM} USER: {USER} ASSISTANT:"),
    ("alpaca-7b", f"{SYSTEM}\n\n### Instruction:\n{USER}\n\n### Response:\n"),
    ("mpt-30b-chat", f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n"
                     "<|im_start|>assistant\n"),
    ("starchat", f"<|system|>\n{SYSTEM}<|end|>\n<|user|>\n{USER}<|end|>\n<|assistant|>\n"),
    ("pythia-12b", f"<|system|>{SYSTEM}<|endoftext|><|prompter|>{USER}<|endoftext|><|assistant|>"),
])
def test_documented_prompt_formats(name, expected):
    entry = CFG.generation.entry(name)
    assert render(entry.chat_template, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]) \
        == expected
