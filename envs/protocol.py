"""The Search-R1 tag protocol, in one place: tags, prompt templates, the observation format
and the action parser. Agents, trainers and envs take every tag and template from here.

An episode is a prompt (:data:`PROMPT`, or a dataset's own prompt; :data:`EXTERNAL_PROMPT`
for external rows without one) followed by turns. A turn is policy text ending in an
action, ``<search> query </search>`` or ``<answer> text </answer>`` (:data:`STOP_TAGS` end
it), optionally after ``<think> ... </think>``; a search is answered by an
``<information>Doc 1(Title: t) text ...</information>`` observation (:func:`format_docs`),
an invalid action by :data:`CORRECTIVE`.

**Parse rule** (:func:`parse_action`; Search-R1's tag protocol, made total): the action is
the text up to and including the **first closing tag** ``</search>`` or ``</answer>``;
anything after it is ignored (a rollout that stops at those strings never produces it).
That span is valid iff it contains **exactly one opening tag** ``<search>`` /
``<answer>``, of the same kind as the closing tag and before it, and the content between
them is non-empty after stripping. ``<think>...</think>`` and any other text around the
tags are ignored. Tags are exact and lowercase (``<Search>`` or ``< search >`` are plain
text), as in Search-R1.

Examples: ``"<think>x</think><search> a </search>"`` -> search "a";
``"<search>a</search><answer>b</answer>"`` -> search "a" (first complete tag wins);
``"<search>a<answer>b</answer>"`` -> invalid (two opening tags: nested/both);
``"<search>a"`` -> invalid (unclosed); ``"<answer></answer>"`` -> invalid (empty);
``"</search>"`` -> invalid (closing tag without opening tag).

:func:`parse_action` never raises and runs in linear time on any string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

from searchgym.retrieval.base import Hit

THINK, SEARCH, ANSWER, INFORMATION = "think", "search", "answer", "information"
#: Every tag of the protocol, opening then closing, in this order (tokenizers add each as
#: one token).
TAGS = tuple(t for name in (THINK, SEARCH, ANSWER, INFORMATION) for t in (f"<{name}>", f"</{name}>"))
#: The closing tags that end an action: generation stops at either.
STOP_TAGS = (f"</{SEARCH}>", f"</{ANSWER}>")
#: The kinds of a parsed action.
ACTION_KINDS = (SEARCH, ANSWER, "invalid")

#: The env's own prompt (world tasks, and user tasks with ``prompt: searchgym``).
PROMPT = (
    "Answer the question. Think inside <think> </think>. To search, write <search> query </search>; "
    "results come back inside <information> </information>. Give the final answer inside "
    "<answer> </answer>, e.g. <answer> Kelmor </answer>.\nQuestion: {question}\n"
)
#: Search-R1's prompt, for external questions whose rows carry none.
EXTERNAL_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you "
    "get new information. After reasoning, if you find you lack some knowledge, you can call a search engine "
    "by <search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as you want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. Question: {question}\n"
)
#: The observation after an invalid action (Search-R1's wording).
CORRECTIVE = (
    "\nMy previous action is invalid. To search, put the query between <search> and </search>. "
    "To answer, put the answer between <answer> and </answer>. Let me try again.\n"
)

_CLOSE = re.compile(r"</(search|answer)>")
_OPEN = re.compile(r"<(search|answer)>")


def tagged(kind: str, content: str) -> str:
    """``content`` inside the ``kind`` tag pair, verbatim: ``tagged("search", "x") ==
    "<search>x</search>"`` (callers add any spacing they want inside)."""
    return f"<{kind}>{content}</{kind}>"


def format_docs(hits: Sequence[Hit], doc_chars: int) -> str:
    """Search-R1's observation: ``<information>Doc 1(Title: t) text\\n...</information>``;
    each text is cut at a word boundary to ``doc_chars`` characters (``" ..."`` marks a cut),
    each title to 80."""
    lines = []
    for i, h in enumerate(hits, start=1):
        text = h.text if len(h.text) <= doc_chars else h.text[:doc_chars].rsplit(" ", 1)[0] + " ..."
        lines.append(f"Doc {i}(Title: {h.title[:80]}) {text}")
    return f"\n<{INFORMATION}>" + "\n".join(lines) + f"</{INFORMATION}>\n"


@dataclass(frozen=True)
class Action:
    """A parsed action: ``kind`` is "search", "answer" or "invalid"; ``content`` the query
    or answer ("" when invalid); ``error`` says why invalid (None otherwise)."""

    kind: Literal["search", "answer", "invalid"]
    content: str = ""
    error: str | None = None


def parse_action(text: str, max_content_chars: int = 300) -> Action:
    """Parse ``text`` by the rule in the module docstring; content is cut to ``max_content_chars``."""
    if not isinstance(text, str):
        return Action("invalid", error=f"action must be a string, got {type(text).__name__}")
    close = _CLOSE.search(text)
    if close is None:
        if _OPEN.search(text):
            return Action("invalid", error="unclosed tag: no </search> or </answer>")
        return Action("invalid", error="no <search>...</search> or <answer>...</answer> tag")
    kind = close.group(1)
    opens = []
    for m in _OPEN.finditer(text, 0, close.start()):
        opens.append(m)
        if len(opens) > 1:  # already invalid: don't collect every tag of a huge input
            break
    if not opens:
        return Action("invalid", error=f"</{kind}> without an opening <{kind}>")
    if len(opens) > 1:
        return Action("invalid", error="nested or repeated opening tags before the first closing tag")
    if opens[0].group(1) != kind:
        return Action("invalid", error=f"<{opens[0].group(1)}> closed by </{kind}>")
    content = text[opens[0].end():close.start()].strip()
    if not content:
        return Action("invalid", error=f"empty <{kind}> tag")
    # collapse whitespace so a query is one line; bound its length
    content = " ".join(content.split())[:max_content_chars].strip()
    return Action(kind, content)
