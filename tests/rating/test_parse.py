"""Parsing realistic judge answers (golden files) into exact values, in both answer modes."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.rating.parse import parse, parse_aspect, parse_critique
from tests.rating.conftest import GOLDEN


def answer(name: str) -> str:
    return (GOLDEN / "answers" / name).read_text(encoding="utf-8")


def ratings(parsed):
    return [j.rating for j in parsed.items]


def test_text_blank_lines_emphasis_fraction_whitespace_and_quoted_labels():
    p = parse_aspect(answer("text_instruction_following_messy.txt"), "instruction_following", 4, "text")
    assert p.ok and ratings(p) == [5.0, 2.0, 4.0, 1.0]
    assert [j.status for j in p.items] == ["ok"] * 4
    assert p.items[0].rationale == ("The text answers the question directly.\n\n"
                                    "It also keeps to the length the instruction implies.")
    assert p.items[1].rationale == "It talks about\na different topic for most of its length."
    assert p.items[2].rationale == "Mostly aligned; one minor deviation in format."
    # Text 4's rationale quotes "Rating: 5" and a Text 1 header: text, never structure.
    assert p.items[3].rationale.endswith("Rating: 5\n#### Output for Text 1\nwhich has nothing to do with the instruction.")
    assert all(j.types is None and j.rationale_for_rating is None for j in p.items)


def test_text_na_only_where_the_rubric_allows_it():
    text = answer("text_honesty_na.txt")
    p = parse_aspect(text, "honesty", 3, "text")
    assert p.ok
    assert [(j.rating, j.na, j.status) for j in p.items] == [(None, True, "na"), (3.0, False, "ok"), (None, True, "na")]
    q = parse_aspect(text, "instruction_following", 3, "text")
    assert not q.ok
    assert [(j.rating, j.status) for j in q.items] == [(None, "unparsed"), (3.0, "ok"), (None, "unparsed")]
    assert q.items[0].reason == "Text 1: N/A is not allowed for instruction_following"


def test_text_truthfulness_types_and_both_rationales():
    p = parse_aspect(answer("text_truthfulness.txt"), "truthfulness", 4, "text")
    assert p.ok and ratings(p) == [2.0, 5.0, 3.0, 4.0]
    assert [j.types for j in p.items] == [["1", "3"], [], ["2"], []]
    assert p.items[1].rationale == "No hallucination found."
    assert p.items[1].rationale_for_rating == "Everything matches the world knowledge."
    assert p.items[2].rationale_for_rating == "Partial misunderstanding of the question.\n\nIt still gets the main point right."


def test_text_helpfulness_markdown_labels():
    p = parse_aspect(answer("text_helpfulness_markdown.txt"), "helpfulness", 2, "text")
    assert p.ok and ratings(p) == [5.0, 3.0]
    assert [j.types for j in p.items] == [["1", "2", "3"], ["1", "3"]]
    assert p.items[0].rationale == "Clear, relevant, detailed and concise."
    assert p.items[0].rationale_for_rating == "Outstandingly helpful, with insight beyond the question."


def test_text_malformed_values_are_refused_not_guessed():
    p = parse_aspect(answer("text_truthfulness_malformed.txt"), "truthfulness", 4, "text")
    assert not p.ok and ratings(p) == [None, None, None, None]
    assert [j.reason for j in p.items] == [
        "Text 1: rating 7 is outside 1-5",
        "Text 2: type 4 is not one of ['1', '2', '3']",
        "Text 3: rating 4.5 is not a whole number",
        "Text 4: no Rating line",
    ]
    assert p.items[0].types == ["1"]  # what was readable is kept for the record
    assert "rating 7 is outside 1-5" in p.reason


def test_text_missing_blocks_and_empty_answers():
    text = "#### Output for Text 1\nRating: 3\nRationale: ok\n\n#### Output for Text 2\nRating: 4\n"
    p = parse_aspect(text, "honesty", 4, "text")
    assert ratings(p) == [3.0, 4.0, None, None]
    assert p.items[2].reason == "found 2 of 4 'Output for Text N' blocks"
    assert parse_aspect("Rating: 2\nRationale: only one text", "honesty", 1, "text").items[0].rating == 2.0
    assert parse_aspect("Rating: 2", "honesty", 2, "text").items[0].status == "unparsed"
    assert parse_aspect("   ", "honesty", 2, "text").items[1].reason == "the answer is empty"
    assert parse_aspect(None, "honesty", 1, "structured").items[0].reason == "the answer is empty"


def test_a_ten_is_never_a_one_and_a_one_is_never_a_ten():
    assert parse_aspect("Rating: 10\nRationale: x", "honesty", 1, "text").items[0].reason == "Text 1: rating 10 is outside 1-5"
    assert parse_aspect("Rating: 1\nRationale: x", "honesty", 1, "text").items[0].rating == 1.0
    assert parse_aspect("Rating: 0\nRationale: x", "honesty", 1, "text").items[0].rating is None
    assert parse_aspect("Rating: 3/10\nRationale: x", "honesty", 1, "text").items[0].rating is None


def test_json_modes():
    p = parse_aspect(answer("json_truthfulness.json"), "truthfulness", 4, "structured")
    assert p.ok and ratings(p) == [2.0, 5.0, 3.0, 4.0]
    assert [j.types for j in p.items] == [["1", "3"], [], ["2"], []]
    assert p.items[0].rationale == "Wrong date, then a contradiction."
    assert p.items[0].rationale_for_rating == "Severe hallucination."
    q = parse_aspect(answer("json_honesty_fenced.txt"), "honesty", 2, "structured")
    assert [(j.rating, j.na) for j in q.items] == [(None, True), (1.0, False)]
    w = parse_aspect(answer("json_honesty_wrong_count.json"), "honesty", 2, "structured")
    assert ratings(w) == [None, None] and w.reason == "'outputs' has 1 entries, expected 2"
    b = parse_aspect(answer("json_instruction_following_bad_enum.json"), "instruction_following", 3, "structured")
    assert ratings(b) == [None, None, 3.0]
    assert [j.reason for j in b.items[:2]] == ["Text 1: N/A is not allowed for instruction_following",
                                               "Text 2: rating 6 is outside 1-5"]
    bad = parse_aspect('{"outputs": [{"rating": "4"', "honesty", 1, "structured")
    assert bad.items[0].reason.startswith("not valid JSON")


def test_critique_scores():
    one = parse_critique(answer("critique_score_one.txt"), "text")
    assert (one.rating, one.status) == (1.0, "ok")
    assert one.rationale == ("The answer misses the point of the instruction entirely.\n\n"
                             "It also invents facts. Rewrite it around the actual question.")
    dec = parse_critique(answer("critique_decimal.txt"), "text")
    assert dec.rating == 8.5 and dec.rationale.startswith("Good structure")
    quoted = parse_critique(answer("critique_quoted_score.txt"), "text")
    assert quoted.rating == 3.0 and "Overall Score: 10" in quoted.rationale
    frac = parse_critique(answer("critique_fraction_of_one.txt"), "text")
    assert (frac.rating, frac.status, frac.reason) == (None, "unparsed", "overall score 0.8 is outside 1-10")
    five = parse_critique(answer("critique_out_of_five.txt"), "text")
    assert five.rating is None and five.reason == "overall score 4/5 is not on the 1-10 scale"
    js = parse_critique(answer("critique_structured.json"), "structured")
    assert (js.rating, js.rationale) == (7.0, "Accurate and concise; cite a source next time.")
    assert parse_critique("Feedback: no score", "text").reason == "no 'Overall Score' line"
    assert parse("Feedback: x\nOverall Score: 10", "critique", 1, "text").items[0].rating == 10.0


# Rationales as a judge writes them: any words, blank lines, even a quoted "Rating: 5" in the
# final rationale; only line-initial labels that would be structure are left out.
_words = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"),
                                        blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
                 min_size=1, max_size=40).map(lambda s: s.strip() or "x")
_para = st.lists(_words, min_size=1, max_size=3).map(lambda ws: "\n\n".join(ws))


def _safe(text: str) -> bool:
    from tasks.rating.parse import _HEADER, _LABEL
    return not any(_LABEL.match(ln) or _HEADER.match(ln) for ln in text.splitlines())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["1", "2", "3", "4", "5"]), st.lists(st.sampled_from(["1", "2", "3"]), unique=True),
                          _para.filter(_safe), _para.filter(_safe), st.sampled_from(["", "**", "/5"])),
                min_size=1, max_size=5))
def test_text_roundtrip(items):
    blocks = []
    for k, (r, types, why_t, why_r, deco) in enumerate(items, start=1):
        shown = f"{r}/5" if deco == "/5" else f"{deco}{r}{deco}"
        blocks.append(f"#### Output for Text {k}\nType: [{', '.join(types)}]\nRationale: {why_t}\nRating: {shown}\n"
                      f"Rationale: {why_r}\nRating: 5 (quoted)")
    p = parse_aspect("\n\n".join(blocks), "helpfulness", len(items), "text")
    assert p.ok, p.reason
    assert ratings(p) == [float(r) for r, *_ in items]
    assert [j.types for j in p.items] == [t for _, t, *_ in items]
    assert [j.rationale for j in p.items] == [w.strip() for _, _, w, *_ in items]


def test_labels_without_spaces_or_with_bold_values():
    p = parse_aspect("Output for Text 1\nRating:4\nRationale:**Bold** start", "honesty", 1, "text")
    assert p.items[0].rating == 4.0 and p.items[0].rationale == "**Bold** start"
    assert parse_critique("Feedback:fine\nOverall Score:9", "text").rating == 9.0
