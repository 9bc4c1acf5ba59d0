"""Action parser and reward normalisation: table-driven cases and a hypothesis fuzz."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searchgym.envs.parser import parse_action
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
