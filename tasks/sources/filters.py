"""Row filters of the sampling stage: normalisation, the "given prompt" filter and
decontamination.

Inputs: instruction texts, evaluation files. Outputs: normalised-text hashes for dedup
and a `Decontaminator` that says why (if at all) a prompt must be dropped: exact match
with a TruthfulQA question, or an n-gram (default 13) shared with an evaluation set.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata

from tasks.errors import InputError
from tasks.sources.config import Decontamination, EvalFile
from tasks.sources.io import read_tabular, read_text

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
# Evol-Instruct rewrites that lost the prompt they rewrite (thunlp/UltraFeedback issue 12).
GIVEN_PROMPT = re.compile(
    r"#\s*(?:the\s+)?given\s+prompt\s*#|#\s*rewritten\s+prompt\s*#"
    r"|\b(?:the|above|following)\s+given\s+prompt\b|\brewritten\s+prompt\b",
    re.I,
)


def normalize(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used for dedup and exact matching."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WS.sub(" ", text).strip()


def norm_hash(text: str) -> str:
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()[:32]


def refers_to_missing_prompt(text: str) -> bool:
    return bool(GIVEN_PROMPT.search(text))


def ngrams(text: str, n: int) -> set[str]:
    words = _WORD.findall(normalize(text))
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def _eval_texts(ev: EvalFile) -> list[str]:
    if ev.format == "text":
        return [line for line in read_text(ev.path).splitlines() if line.strip()]
    if ev.format == "truthful_qa":
        from tasks.sources.adapters import truthful_qa

        return [r["instruction"] for r in truthful_qa(ev.path)]
    if not ev.column:
        raise InputError(f"sampling.decontamination.eval_files: {ev.path}: format {ev.format} needs 'column'")
    return [str(r[ev.column]) for _, r in read_tabular(ev.path, [ev.column])]


class Decontaminator:
    """Holds the evaluation n-grams and TruthfulQA questions of one run."""

    def __init__(self, cfg: Decontamination, truthful_questions: list[str]):
        self.n = cfg.ngram
        self.truthful = {normalize(q) for q in truthful_questions} if cfg.truthful_qa_exact else set()
        self.grams: dict[str, str] = {}  # n-gram -> evaluation file it came from
        for ev in cfg.eval_files:
            name = ev.path.rsplit("/", 1)[-1]
            for text in _eval_texts(ev):
                for g in ngrams(text, self.n):
                    self.grams.setdefault(g, name)
        self.eval_files = {ev.path.rsplit("/", 1)[-1] for ev in cfg.eval_files}

    def reason(self, text: str, source_format: str, source_file: str) -> str | None:
        """Why this prompt must go ('truthfulqa_exact', 'ngram_overlap'), or None."""
        if source_format != "truthful_qa" and normalize(text) in self.truthful:
            return "truthfulqa_exact"
        if self.grams:
            for g in ngrams(text, self.n):
                origin = self.grams.get(g)
                # A source is not decontaminated against itself (TruthfulQA listed as both).
                if origin is not None and origin != source_file:
                    return "ngram_overlap"
        return None
