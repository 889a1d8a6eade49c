"""Train two DPO and two reward-model steps with TRL on a run's published preference pairs.

Usage (TRL pulls in torch, so use an environment of its own, not the project's):
    python scripts/check_trl_dpo.py runs/demo

Inputs: a run's output root. For each pair set in TRL's layout (trl, all_pairs, and the sets
of publish.pair_rules under preferences/<name>/) it loads the
Parquet files with `datasets`, builds a word-level tokenizer with a chat template from the
pairs' own text and a tiny randomly initialised Llama, and runs `trl.DPOTrainer` for two
steps on CPU, then `trl.RewardTrainer` on a tiny sequence classifier. Nothing is
downloaded. Output: one line per dataset, `OK` with both losses or `FAIL` with the error;
the exit code is the number of failures.
"""
from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

# h4 and argilla keep their releases' columns (a string prompt beside full conversations),
# which TRL's trainers do not take as they are; the trl set is the same kind of pairs in
# TRL's explicit-prompt layout.
SETS = {
    "trl": "preferences/trl/train-*.parquet",
    "all_pairs": "preferences/all_pairs/train-*.parquet",
}
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}")


def tiny_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for text in texts:
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = TEMPLATE
    return fast


def check(root: Path, name: str, pattern: str) -> str:
    from datasets import load_dataset
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    if not list(root.glob(pattern)):
        return "SKIP (no files)"
    ds = load_dataset("parquet", data_files=str(root / pattern))["train"]
    if ds.num_rows < 2:
        return f"SKIP ({ds.num_rows} rows)"
    texts = [m["content"] for ex in ds for key in ("prompt", "chosen", "rejected") for m in ex[key]]
    tok = tiny_tokenizer(texts + ["user : assistant :"])
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=0, eos_token_id=1, bos_token_id=1))
    args = DPOConfig(output_dir=tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=2, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, max_length=256)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=ds,
                         processing_class=tok)
    dpo_loss = trainer.train().training_loss
    # The reward trainer reads the same columns (prompt + chosen / rejected).
    rm = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=1, num_labels=1))
    rargs = RewardConfig(output_dir=tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=2, report_to=[],
                         use_cpu=True, save_strategy="no", logging_steps=1, max_length=256)
    reward_loss = RewardTrainer(model=rm, args=rargs, train_dataset=ds, processing_class=tok).train().training_loss
    return f"OK dpo_loss={dpo_loss:.4f} reward_loss={reward_loss:.4f} rows={ds.num_rows}"


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "runs/demo")
    import trl

    print(f"trl {trl.__version__}")
    failures = 0
    sets = dict(SETS)
    # Sets made by publish.pair_rules (tulu3, delta, on-policy) live in preferences/<name>/.
    # h4 and argilla keep their releases' columns, not TRL's layout: they are not checked here.
    for folder in sorted((root / "preferences").glob("*/")):
        if folder.name not in {"h4", "argilla"}:
            sets.setdefault(folder.name, f"preferences/{folder.name}/train-*.parquet")
    for name, pattern in sets.items():
        try:
            print(f"{name}: {check(root, name, pattern)}")
        except Exception as exc:  # report every dataset, then fail
            failures += 1
            print(f"{name}: FAIL {type(exc).__name__}: {exc}")
    return failures


if __name__ == "__main__":
    sys.exit(main(sys.argv))
