"""One tokenisation of an episode, shared by the rollout engine, the demonstrations and SFT.

An episode is a prompt followed by a response made of alternating segments: policy text
(loss mask 1) and observation text (loss mask 0). Each segment is tokenised on its own with
``add_special_tokens=False`` and the pieces are concatenated; the engine tokenises
observations with the very same ``encode_text``, so a demonstration tokenised here and a
rollout produced by the engine mask observation tokens identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from searchgym.envs.protocol import ANSWER, SEARCH, TAGS, THINK

# Per-token segment labels (the metrics contract): the tag context a token sits in.
SEGMENT_LABELS = ("think", "query", "answer", "other")
_OPEN = {f"<{THINK}>": "think", f"<{SEARCH}>": "query", f"<{ANSWER}>": "answer"}
_CLOSE = {f"</{t}>" for t in (THINK, SEARCH, ANSWER)}


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids: the tokenizer's chat template when it has one (one user message,
    generation prompt added), else BOS (when defined) + the plain text."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer HF
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + list(ids)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of a response segment (policy text or observation), no special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=False))


@dataclass
class EpisodeTokens:
    """Token layout of one episode: ``response_ids`` follow ``prompt_ids``; ``loss_mask``
    and ``segments`` have one entry per response token."""

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


def tokenize_episode(tokenizer, prompt: str, turns: list[tuple[str, str | None]]) -> EpisodeTokens:
    """Tokenise ``prompt`` + ``[(action_text, observation_text or None), ...]``.

    Used for SFT on demonstrations; the layout (prompt ids, mask 1 on action tokens, mask 0
    on observation tokens, per-token segment labels) is exactly what the engine records.
    """
    ep = EpisodeTokens(prompt_ids=encode_prompt(tokenizer, prompt))
    for action, obs in turns:
        ids = encode_text(tokenizer, action)
        ep.response_ids += ids
        ep.loss_mask += [1] * len(ids)
        if obs:
            o = encode_text(tokenizer, obs)
            ep.response_ids += o
            ep.loss_mask += [0] * len(o)
    ep.segments = segment_labels(tokenizer, ep.response_ids, ep.loss_mask)
    return ep


def tag_ids(tokenizer) -> dict[str, int]:
    """Ids of the protocol tags that are single tokens in this tokenizer."""
    out = {}
    for tag in TAGS:
        ids = tokenizer.encode(tag, add_special_tokens=False)
        if len(ids) == 1:
            out[tag] = int(ids[0])
    return out


def segment_labels(tokenizer, response_ids: list[int], loss_mask: list[int]) -> list[str]:
    """Label each response token think/query/answer/other by the tag it sits inside.

    Tags themselves and observation tokens are ``other``. Requires single-token tags for
    exact labels; with multi-token tags everything is ``other``.
    """
    ids = tag_ids(tokenizer)
    open_by_id = {ids[t]: lab for t, lab in _OPEN.items() if t in ids}
    close_ids = {ids[t] for t in _CLOSE if t in ids}
    labels, cur = [], "other"
    for tok, m in zip(response_ids, loss_mask):
        if not m:
            labels.append("other")
            cur = "other"
            continue
        if tok in open_by_id:
            labels.append("other")
            cur = open_by_id[tok]
        elif tok in close_ids:
            labels.append("other")
            cur = "other"
        else:
            labels.append(cur)
    return labels
