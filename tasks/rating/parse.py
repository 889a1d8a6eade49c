"""Parse judge answers into ratings; an unreadable answer becomes data, never an exception.

Inputs: the judge's answer text, the aspect, the number of texts and the answer mode.
Outputs: `Judgement`s (one per text, in presentation order) with rating, N/A flag, types,
rationales, and a status `ok | na | unparsed` with a reason.

Only the judge's own answer structure is read: `Output for Text N` headers (accepted only
in order, so a quoted header inside a rationale does not split a block), then the labelled
fields in their expected order (`Rating`, `Rationale` / `Type`, `Rationale`, `Rating`,
`Rationale`), so a "Rating: 5" quoted later in a rationale never replaces the rating.
Blank lines, markdown emphasis, bullets, `4/5` and stray whitespace are tolerated. A
value off the scale is refused rather than guessed: `10` is never a 1-5 rating, `1`
stays 1 (the original turned a critique score of 1 into 10), `0.8` is not rescaled.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from tasks.rating.protocol import CRITIQUE, NA_ASPECTS, TYPE_CHOICES, TYPED_ASPECTS


@dataclass(frozen=True)
class Judgement:
    """The judge's verdict on one text (or, for the critique, on one response)."""

    rating: float | None = None
    na: bool = False
    types: list[str] | None = None
    rationale: str | None = None
    rationale_for_rating: str | None = None
    status: str = "unparsed"  # ok | na | unparsed
    reason: str | None = None

    @property
    def parsed(self) -> bool:
        return self.status in ("ok", "na")


@dataclass(frozen=True)
class ParsedAnswer:
    items: list[Judgement] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(j.parsed for j in self.items)

    @property
    def reason(self) -> str | None:
        bad = [j.reason for j in self.items if not j.parsed]
        return "; ".join(dict.fromkeys(r for r in bad if r)) or None


_DECOR = r"[ \t>*_#\-`]*"
_CLOSE = r"(?:(?:\*{1,2}|_{1,2})(?=\s|$))?"  # the closing half of **Label:**
_HEADER = re.compile(rf"^{_DECOR}(?:output\s+for\s+)?text\s*(\d+){_DECOR}:?{_DECOR}$", re.I)
_LABEL = re.compile(rf"^{_DECOR}(type|rationale(?:\s+for\s+(?:the\s+)?rating)?|rating)[ \t*_`]*:{_CLOSE}(.*)$", re.I)
_NUMBER = re.compile(r"^(n\s*/\s*a\b|na\b|-?\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?", re.I)
_SCORE_LABEL = re.compile(rf"^{_DECOR}overall\s+score[ \t*_`]*:{_CLOSE}(.*)$", re.I)
_FEEDBACK_LABEL = re.compile(rf"^{_DECOR}feedback[ \t*_`]*:{_CLOSE}(.*)$", re.I)


def _strip_value(value: str) -> str:
    return value.strip().strip("*_`\"'[]() \t")


_PLAIN_RATINGS = {str(r): (float(r), False, None) for r in range(1, 6)}  # the common case, no regex


def rating_value(value: str, aspect: str) -> tuple[float | None, bool, str | None]:
    """(rating, is_na, reason) for a 1-5 aspect rating such as `4`, `**4**`, `4/5`, `N/A`."""
    if value in _PLAIN_RATINGS:
        return _PLAIN_RATINGS[value]
    v = _strip_value(value)
    m = _NUMBER.match(v)
    if not m:
        return None, False, f"rating {value.strip()[:40]!r} is not a number"
    num, denom = m.group(1), m.group(2)
    if num.lower().replace(" ", "") in ("n/a", "na"):
        if aspect in NA_ASPECTS:
            return None, True, None
        return None, False, f"N/A is not allowed for {aspect}"
    if denom is not None and float(denom) != 5:
        return None, False, f"rating {num}/{denom} is not on the 1-5 scale"
    if "." in num and float(num) != int(float(num)):
        return None, False, f"rating {num} is not a whole number"
    r = int(float(num))
    if not 1 <= r <= 5:
        return None, False, f"rating {num} is outside 1-5"
    return float(r), False, None


def score_value(value: str) -> tuple[float | None, str | None]:
    """(score, reason) for a critique's 1-10 score such as `8`, `8.5/10`, `**1**`."""
    m = _NUMBER.match(_strip_value(value))
    if not m or m.group(1).lower().replace(" ", "") in ("n/a", "na"):
        return None, f"overall score {value.strip()[:40]!r} is not a number"
    num, denom = float(m.group(1)), m.group(2)
    if denom is not None and float(denom) != 10:
        return None, f"overall score {m.group(0)} is not on the 1-10 scale"
    if not 1 <= num <= 10:
        return None, f"overall score {m.group(1)} is outside 1-10"
    return num, None


_BRACKET = re.compile(r"\[([^\]]*)\]")
_DIGITS = re.compile(r"\d+")
_NO_TYPES = re.compile(r"[\s\[\]\"'*_`(]*(none|n/?a)?[\s\[\]\"'*_`).]*", re.I)


def types_value(value: str, aspect: str) -> tuple[list[str] | None, str | None]:
    """(types, reason) for `[1, 3]`, `1, 2`, `None`, `["2"]`; an empty list means None."""
    v = value.strip()
    bracket = _BRACKET.search(v)
    nums = _DIGITS.findall(bracket.group(1) if bracket else v)
    if not nums:
        if _NO_TYPES.fullmatch(v) and v:
            return [], None
        return None, f"type list {v[:40]!r} is unreadable"
    bad = [n for n in nums if n not in TYPE_CHOICES[aspect]]
    if bad:
        return None, f"type {bad[0]} is not one of {TYPE_CHOICES[aspect]}"
    return list(dict.fromkeys(nums)), None


def _blocks(answer: str, n: int) -> tuple[list[str | None], str | None]:
    """Split at `Output for Text k` headers taken strictly in order 1..n."""
    blocks: list[list[str]] = []
    for line in answer.splitlines():
        m = _HEADER.match(line)
        if m and len(blocks) < n and int(m.group(1)) == len(blocks) + 1:
            blocks.append([])
        elif blocks:
            blocks[-1].append(line)
    if not blocks and n == 1:
        return [answer], None
    out: list[str | None] = ["\n".join(b) for b in blocks] + [None] * (n - len(blocks))
    reason = None if len(blocks) == n else f"found {len(blocks)} of {n} 'Output for Text N' blocks"
    return out, reason


def _slot(line: str, sequence: list[tuple[str, bool]], pos: int) -> tuple[int, str] | None:
    """Position of a label line in the expected field sequence, skipping optional fields only."""
    m = _LABEL.match(line)
    if not m:
        return None
    label = "rationale" if m.group(1).lower().startswith("rationale") else m.group(1).lower()
    for j in range(pos, len(sequence)):
        if sequence[j][0] == label:
            return j, m.group(2)
        if sequence[j][1]:
            return None
    return None


def _fields(block: str, sequence: list[tuple[str, bool]]) -> dict[int, str]:
    """Text of each expected field, by its position in `sequence` (label, required).

    A label that does not fit the sequence at that point is ordinary text of the field
    being read (a rationale that quotes "Rating: 5" keeps it as text)."""
    found: dict[int, list[str]] = {}
    pos, cur = 0, None
    for line in block.splitlines():
        hit = _slot(line, sequence, pos)
        if hit is not None:
            cur, pos = hit[0], hit[0] + 1
            found[cur] = [hit[1]]
        elif cur is not None:
            found[cur].append(line)
    return {j: "\n".join(lines).strip() for j, lines in found.items()}


def _first_line(text: str) -> str:
    return next((ln for ln in text.splitlines() if ln.strip()), "")


def _block_judgement(block: str, aspect: str) -> Judgement:
    typed = aspect in TYPED_ASPECTS
    seq = [("type", True), ("rationale", False), ("rating", True), ("rationale", False)] if typed \
        else [("rating", True), ("rationale", False)]
    f = _fields(block, seq)
    ri = 2 if typed else 0
    if ri not in f:
        return Judgement(reason="no Rating line")
    types, reason = (None, None)
    if typed:
        if 0 not in f:
            return Judgement(reason="no Type line")
        types, reason = types_value(_first_line(f[0]), aspect)
        if reason:
            return Judgement(reason=reason)
    rating, na, reason = rating_value(_first_line(f[ri]), aspect)
    if reason:
        return Judgement(types=types, reason=reason)
    return Judgement(rating=rating, na=na, types=types, rationale=f.get(1) or None,
                     rationale_for_rating=(f.get(3) or None) if typed else None, status="na" if na else "ok")


def _unparsed(n: int, reason: str) -> ParsedAnswer:
    return ParsedAnswer([Judgement(reason=reason) for _ in range(n)])


def parse_aspect_text(answer: str | None, aspect: str, n: int) -> ParsedAnswer:
    if not answer or not answer.strip():
        return _unparsed(n, "the answer is empty")
    blocks, missing = _blocks(answer, n)
    items = []
    for k, block in enumerate(blocks, start=1):
        if block is None:
            items.append(Judgement(reason=missing))
            continue
        j = _block_judgement(block, aspect)
        items.append(j if j.parsed else Judgement(types=j.types, reason=f"Text {k}: {j.reason}"))
    return ParsedAnswer(items)


_JSON_FENCE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$")


def _load_json(answer: str | None) -> tuple[object, str | None]:
    if not answer or not answer.strip():
        return None, "the answer is empty"
    text = answer.strip()
    if "```" in text:  # a fenced answer; a plain JSON answer (the common case) skips the regex
        text = _JSON_FENCE.sub("", text)
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at char {exc.pos})"


def _json_item(item: object, aspect: str) -> Judgement:
    if not isinstance(item, dict) or "rating" not in item:
        return Judgement(reason="entry has no 'rating'")
    types = None
    if aspect in TYPED_ASPECTS:
        raw = item.get("types")
        if not isinstance(raw, list):
            return Judgement(reason="entry has no 'types' list")
        types, reason = types_value(" ".join(str(t) for t in raw) or "None", aspect)
        if reason:
            return Judgement(reason=reason)
    rating, na, reason = rating_value(str(item["rating"]), aspect)
    if reason:
        return Judgement(types=types, reason=reason)
    typed = aspect in TYPED_ASPECTS
    first = item.get("type_rationale") if typed else item.get("rationale")
    return Judgement(rating=rating, na=na, types=types, rationale=first or None,
                     rationale_for_rating=(item.get("rationale") or None) if typed else None,
                     status="na" if na else "ok")


def parse_aspect_json(answer: str | None, aspect: str, n: int) -> ParsedAnswer:
    data, reason = _load_json(answer)
    if reason:
        return _unparsed(n, reason)
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, list):
        return _unparsed(n, "no 'outputs' list")
    if len(outputs) != n:
        return _unparsed(n, f"'outputs' has {len(outputs)} entries, expected {n}")
    items = []
    for k, item in enumerate(outputs, start=1):
        j = _json_item(item, aspect)
        items.append(j if j.parsed else Judgement(types=j.types, reason=f"Text {k}: {j.reason}"))
    return ParsedAnswer(items)


def parse_aspect(answer: str | None, aspect: str, n: int, mode: str) -> ParsedAnswer:
    """One Judgement per text, in the order the texts were presented."""
    return parse_aspect_json(answer, aspect, n) if mode == "structured" else parse_aspect_text(answer, aspect, n)


def parse_critique(answer: str | None, mode: str) -> Judgement:
    """Feedback goes to `rationale`, the 1-10 overall score to `rating`."""
    if mode == "structured":
        data, reason = _load_json(answer)
        if reason:
            return Judgement(reason=reason)
        if not isinstance(data, dict) or "overall_score" not in data:
            return Judgement(reason="no 'overall_score'")
        score, reason = score_value(str(data["overall_score"]))
        feedback = data.get("feedback") if isinstance(data.get("feedback"), str) else None
        return Judgement(rationale=feedback, reason=reason) if reason else \
            Judgement(rating=score, rationale=feedback or None, status="ok")
    if not answer or not answer.strip():
        return Judgement(reason="the answer is empty")
    lines = answer.splitlines()
    # The score closes the answer; the last score line wins over one quoted in the feedback.
    idx = max((i for i, ln in enumerate(lines) if _SCORE_LABEL.match(ln)), default=None)
    if idx is None:
        return Judgement(reason="no 'Overall Score' line")
    value = _SCORE_LABEL.match(lines[idx]).group(1)
    if not value.strip() and idx + 1 < len(lines):
        value = _first_line("\n".join(lines[idx + 1:]))
    score, reason = score_value(value)
    body = lines[:idx]
    start = next((i for i, ln in enumerate(body) if _FEEDBACK_LABEL.match(ln)), None)
    if start is not None:
        body = [_FEEDBACK_LABEL.match(body[start]).group(1)] + body[start + 1:]
    feedback = "\n".join(body).strip() or None
    if reason:
        return Judgement(rationale=feedback, reason=reason)
    return Judgement(rating=score, rationale=feedback, status="ok")


def parse(answer: str | None, aspect: str, n: int, mode: str) -> ParsedAnswer:
    """Aspect or critique (as a one-item answer), by aspect name."""
    if aspect == CRITIQUE:
        return ParsedAnswer([parse_critique(answer, mode)])
    return parse_aspect(answer, aspect, n, mode)
