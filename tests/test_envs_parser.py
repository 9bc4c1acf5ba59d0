"""Action parser and reward normalisation: table-driven cases and a hypothesis fuzz."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searchgym.envs.protocol import parse_action
from searchgym.envs.reward import em_score, f1_score, normalize_answer

CASES = [
    ("<search>Talo Benmar</search>", "search", "Talo Benmar"),
    ("<think>hmm</think>\n<search>  a   b \n c </search>", "search", "a b c"),
    ("<answer> Kelmor </answer>", "answer", "Kelmor"),
    ("<search>a</search><answer>b</answer>", "search", "a"),  # first complete tag wins
    ("<answer>b</answer><search>a</search>", "answer", "b"),
    ("<search>a<answer>b</answer>", "invalid", ""),  # both kinds open before the first close
    ("<search>a<search>b</search>", "invalid", ""),  # nested
    ("<search>a</answer>", "invalid", ""),  # mismatched
    ("<search>a", "invalid", ""),  # unclosed
    ("</search>", "invalid", ""),  # close without open
    ("<search>   </search>", "invalid", ""),  # empty
    ("<answer></answer>", "invalid", ""),
    ("<SEARCH>a</SEARCH>", "invalid", ""),  # tags are exact lowercase
    ("< search >a</ search >", "invalid", ""),
    ("just text", "invalid", ""),
    ("", "invalid", ""),
    ("<search>Ünïcødé 東京 🚀</search>", "search", "Ünïcødé 東京 🚀"),
    ("<search>a</search> trailing <search>", "search", "a"),
    ("<think><search>x</search></think>", "search", "x"),
]


@pytest.mark.parametrize("text,kind,content", CASES)
def test_parse_table(text, kind, content):
    a = parse_action(text)
    assert a.kind == kind
    if kind == "invalid":
        assert a.error
    else:
        assert a.content == content and a.error is None


def test_parse_bounds_content():
    a = parse_action("<search>" + "x " * 5000 + "</search>", max_content_chars=50)
    assert a.kind == "search" and len(a.content) <= 50


def test_parse_non_string():
    assert parse_action(None).kind == "invalid"  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=2000), st.integers(min_value=0, max_value=100_000))
def test_parse_never_raises(text, pad):
    s = text + ("<search>" if pad % 3 == 0 else "") + "y" * pad + text
    a = parse_action(s)
    assert a.kind in ("search", "answer", "invalid")
    assert len(a.content) <= 300


def test_normalisation_and_scores():
    assert normalize_answer("The  Kelmor!") == "kelmor"
    assert em_score("the kelmor", ["Kelmor"]) == 1.0
    assert em_score("Kelmo", ["Kelmor", "Varonia"]) == 0.0
    assert em_score("varonia.", ["Kelmor", "Varonia"]) == 1.0
    assert f1_score("Talo Benmar", ["Benmar"]) == pytest.approx(2 / 3)
    assert f1_score("", ["x"]) == 0.0


# ---------------------------------------------------------------------------- fuzzing
# Invariants of parse_action on any input: never raises, the kind is one of the three,
# a valid action has non-empty bounded content and no error, an invalid one an error
# string; time is linear in the input (no regex backtracking blow-up).

import time  # noqa: E402

TAGS = ["<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>", "<information>",
        "</information>", "<search", "search>", "</", "<", ">", "<Search>", "</ answer>"]
_fragment = st.one_of(st.sampled_from(TAGS), st.text(max_size=12), st.sampled_from([" ", "\n", "\t", "x", "é", "🚀", "\x00"]))
tag_soup = st.lists(_fragment, max_size=60).map("".join)


def _check_action(a, max_chars=300):
    assert a.kind in ("search", "answer", "invalid")
    if a.kind == "invalid":
        assert isinstance(a.error, str) and a.error and a.content == ""
    else:
        assert a.error is None and 0 < len(a.content) <= max_chars
        assert a.content == a.content.strip() and "\n" not in a.content


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(max_size=400), tag_soup), st.integers(min_value=1, max_value=400))
def test_fuzz_parse_any_text(text, max_chars):
    _check_action(parse_action(text, max_content_chars=max_chars), max_chars)


@settings(max_examples=2000, deadline=None)
@given(tag_soup)
def test_fuzz_parse_tag_soup_matches_rule(text):
    """Tag soup against an independent reading of the rule in the module docstring."""
    a = parse_action(text)
    _check_action(a)
    closes = [(text.find(t), t[2:-1]) for t in ("</search>", "</answer>") if t in text]
    if not closes:
        assert a.kind == "invalid"
        return
    end, kind = min(closes)
    head = text[:end]
    opens = [(i, k) for k in ("search", "answer") for i in range(len(head)) if head.startswith(f"<{k}>", i)]
    body = head[opens[0][0] + len(opens[0][1]) + 2:] if len(opens) == 1 else ""
    if len(opens) == 1 and opens[0][1] == kind and body.strip():
        assert (a.kind, a.content) == (kind, " ".join(body.split())[:300].strip())
    else:
        assert a.kind == "invalid"


MB = 1 << 20
PATHOLOGICAL = {  # name -> input of about n characters
    "open_tags": lambda n: "<search>" * (n // 8),
    "open_then_close": lambda n: "<search>" * (n // 8) + "</search>",
    "close_tags": lambda n: "</answer>" * (n // 9),
    "angle_brackets": lambda n: "<" * n,
    "almost_tags": lambda n: "</searc" * (n // 7),
    "huge_content": lambda n: "<search>" + "a " * (n // 2) + "</search>",
    "huge_whitespace": lambda n: "<answer>" + " \n\t" * (n // 3) + "x</answer>",
    "unicode": lambda n: "東" * n,
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_parse_1mb_is_fast_and_linear(name):
    make = PATHOLOGICAL[name]
    big, small = make(MB), make(MB // 10)

    def best(s):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            a = parse_action(s)
            times.append(time.perf_counter() - t0)
            _check_action(a)
        return min(times)

    t_big, t_small = best(big), best(small)
    assert t_big < 1.0, f"{name}: {t_big:.3f}s for a 1 MB action"
    # 10x the input may cost ~10x the time; a quadratic scan would cost ~100x
    assert t_big < 40 * t_small + 0.05, f"{name}: {t_small:.4f}s -> {t_big:.4f}s for 10x the input"
