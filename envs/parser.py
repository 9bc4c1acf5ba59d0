"""Parse one agent turn into a search, an answer, or an invalid action.

Rule (Search-R1's tag protocol, made total): the action is the text up to and including
the **first closing tag** ``</search>`` or ``</answer>``; anything after it is ignored
(a rollout that stops at those strings never produces it). That span is valid iff it
contains **exactly one opening tag** ``<search>`` / ``<answer>``, of the same kind as the
closing tag and before it, and the content between them is non-empty after stripping.
``<think>...</think>`` and any other text around the tags are ignored. Tags are exact and
lowercase (``<Search>`` or ``< search >`` are plain text), as in Search-R1.

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

_CLOSE = re.compile(r"</(search|answer)>")
_OPEN = re.compile(r"<(search|answer)>")


@dataclass(frozen=True)
class Action:
    """A parsed action: ``kind`` is "search", "answer" or "invalid"; ``error`` says why invalid."""

    kind: str
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
