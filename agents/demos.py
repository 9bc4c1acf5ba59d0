"""Demonstration sets for SFT warm starts: ``narrow`` vs ``diverse``, matched.

``narrow`` runs the canonical strategy of each question's family (direct / forward /
a_first); ``diverse`` runs a strategy drawn uniformly from the question's valid ones. Both
sets are built from the SAME episode slots (question, episode index) and a slot is kept
only if both agents answered it correctly, so the sets have the same questions, the same
count and the same success rate (1.0). Token counts are reported for both; the summary
shows each set's strategy distribution and normalised signature entropy.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from searchgym.agents.episode import EpisodeTokens, tokenize_episode
from searchgym.agents.policy import run_text_policy
from searchgym.agents.record import EpisodeRecord
from searchgym.agents.scripted import ScriptedPolicy
from searchgym.agents.trajectory import Trajectory, question_count
from searchgym.envs.env import EnvConfig, SearchEnv
from searchgym.envs.world import ensure_index, load_questions, world_fingerprint
from searchgym.metrics.diversity import normalized_entropy
from searchgym.retrieval import load_retriever
from searchgym.retrieval.fileio import atomic_write_text, read_jsonl

KINDS = ("narrow", "diverse")
_WORDS = re.compile(r"</?\w+>|\w+|[^\w\s]")


def count_tokens(text: str, tokenizer=None) -> int:
    """Tokens of ``text``: the tokenizer's when given, else words/punctuation/tags."""
    if tokenizer is not None:
        return len(tokenizer.encode(text, add_special_tokens=False))
    return len(_WORDS.findall(text))


def demo_record(traj: Trajectory, kind: str, tokenizer=None, world: str | None = None) -> dict:
    """One demonstration line: the :class:`~searchgym.agents.record.EpisodeRecord` JSON
    with ``kind``, ``world`` (the :func:`~searchgym.envs.world.world_fingerprint` of the
    world it was played in) and token counts by ``tokenizer`` (else words/punctuation/tags);
    the scripted strategy run is ``meta.scripted_strategy``."""
    rec = EpisodeRecord.from_trajectory(traj, kind=kind, world=world)
    rec.num_policy_tokens = count_tokens("".join(t["action"] for t in traj.turns), tokenizer)
    rec.num_tokens = count_tokens(rec.transcript, tokenizer)
    return rec.to_json(include_tokens=False)


def demo_tokens(tokenizer, record: dict) -> EpisodeTokens:
    """SFT tokenisation of a demo line: the engine's exact layout (mask 0 on observations)."""
    try:
        turns = [(t["action"], t.get("observation")) for t in record["turns"]]
        prompt = record["prompt"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a demonstration record (missing {exc})") from None
    return tokenize_episode(tokenizer, prompt, turns)


def read_demo_lines(path: str | Path) -> list:
    """The parsed lines of a demonstration JSONL file. Demo files are written atomically,
    so a torn or non-JSON line is corruption: it raises naming file:line (never dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demonstration file not found: {path}")
    try:
        return read_jsonl(path, skip_torn_tail=False)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def check_demos_world(records: Sequence[dict], path: str | Path, world_dir: str | Path) -> None:
    """Raise ValueError if demos recorded a world (``"world"``) other than ``world_dir``'s.
    Lines without the field (files from before it existed) are not checked."""
    want = world_fingerprint(world_dir)
    for i, r in enumerate(records, start=1):
        got = r.get("world") if isinstance(r, dict) else None
        if got is not None and got != want:
            raise ValueError(f"{path}:{i}: demonstration of world {got!r}, but the world is {world_dir} "
                             f"({want!r}); build demos on this world with `searchgym demos --world {world_dir}`")


def load_demos(path: str | Path, world_dir: str | Path | None = None) -> list[dict]:
    """Read a demonstration JSONL file (checks the fields SFT needs, and the recorded
    world against ``world_dir`` when given)."""
    recs = read_demo_lines(path)
    for i, r in enumerate(recs, start=1):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or not isinstance(r.get("turns"), list):
            raise ValueError(f"{path}:{i}: a demonstration needs 'prompt' (str) and 'turns' (list)")
    if not recs:
        raise ValueError(f"{path}: no demonstrations")
    if world_dir:
        check_demos_world(recs, path, world_dir)
    return recs


@dataclass
class DemoConfig:
    """How to build a demonstration set."""

    kind: str = "diverse"
    n: int = 200
    split: str = "train"
    seed: int = 0
    index_kind: str = "dense"
    batch_size: int = 64
    max_turns: int = 5

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"--kind must be one of {KINDS}, got {self.kind!r}")
        if self.n < 1:
            raise ValueError(f"-n must be >= 1, got {self.n}")


def world_envs(world_dir: str | Path, split: str, n: int, index_kind: str = "dense", max_turns: int = 5):
    """``n`` SearchEnvs over a world's split sharing one retriever."""
    world_dir = Path(world_dir)
    if not (world_dir / "corpus.jsonl").is_file():
        raise FileNotFoundError(f"not a world folder (no corpus.jsonl): {world_dir}")
    qs = [q for q in load_questions(world_dir, split) if q.strategies]
    if not qs:
        raise ValueError(f"world {world_dir} has no {split} questions with strategies")
    retriever = load_retriever(ensure_index(world_dir, index_kind))
    cfg = EnvConfig(max_turns=max_turns)
    return [SearchEnv(qs, retriever, cfg, split=split) for _ in range(n)]


def build_matched(world_dir: str | Path, n: int, split: str = "train", seed: int = 0,
                  index_kind: str = "dense", batch_size: int = 64, max_turns: int = 5,
                  envs=None, tokenizer=None) -> dict[str, list[dict]]:
    """Both sets, matched slot by slot: ``{"narrow": [...], "diverse": [...]}``."""
    envs = envs or world_envs(world_dir, split, batch_size, index_kind, max_turns)
    world = None
    if world_dir is not None and (Path(world_dir) / "manifest.json").is_file():
        world = world_fingerprint(world_dir)
    nq = question_count(envs[0])
    order = list(range(nq))
    random.Random(f"demos/{seed}").shuffle(order)  # spread slots over every family
    pols = {"narrow": ScriptedPolicy("canonical", seed=seed), "diverse": ScriptedPolicy("mixture", seed=seed)}
    pool: list[tuple[dict, dict]] = []
    want = n + max(4, n // 2)  # spare pairs to balance token counts
    slot = 0
    while len(pool) < want:
        if slot > 4 * want + 4 * nq:
            if len(pool) >= n:
                break
            raise ValueError(f"only {len(pool)} of {n} matched demonstrations succeeded "
                             f"for both agents after {slot} slots")
        m = min(len(envs), 2 * (want - len(pool)) + 1)
        slots = list(range(slot, slot + m))
        slot += m
        qidx = [order[s % nq] for s in slots]
        res = {kind: run_text_policy(pol, envs[:m], [{"index": q} for q in qidx], group_ids=qidx,
                                     episode_indices=slots)
               for kind, pol in pols.items()}
        for a, b in zip(res["narrow"], res["diverse"]):
            if a.correct and b.correct:
                pool.append((demo_record(a, "narrow", tokenizer, world), demo_record(b, "diverse", tokenizer, world)))
    chosen = _balance(pool, n)
    return {"narrow": [a for a, _ in chosen], "diverse": [b for _, b in chosen]}


def _balance(pool: list[tuple[dict, dict]], n: int, tol: float = 0.05) -> list[tuple[dict, dict]]:
    """Pick ``n`` pairs in pool order, skipping a pair when it would push the diverse set's
    policy-token total more than ``tol`` away from the narrow set's (diverse strategies with
    a confirmation search are longer); skipped pairs fill up at the end, shortest gap first."""
    chosen, skipped, dn, dd = [], [], 0, 0
    for a, b in pool:
        if len(chosen) == n:
            break
        na, nb = dn + a["num_policy_tokens"], dd + b["num_policy_tokens"]
        if abs(nb - na) <= tol * na or abs(nb - na) <= abs(dd - dn):
            chosen.append((a, b))
            dn, dd = na, nb
        else:
            skipped.append((a, b))
    skipped.sort(key=lambda p: p[1]["num_policy_tokens"] - p[0]["num_policy_tokens"])
    chosen += skipped[: n - len(chosen)]
    return chosen


def set_summary(records: Sequence[dict | EpisodeRecord], support: int | None = None) -> dict:
    """Count, success rate, token counts, strategy distribution and normalised signature
    entropy (overall, over ``support`` possible signatures, and mean within family)."""
    recs = [r if isinstance(r, EpisodeRecord) else EpisodeRecord.from_json(r) for r in records]
    n = len(recs)
    sigs = [r.signature for r in recs]
    fam: dict[str, list] = {}
    for r in recs:
        fam.setdefault(r.family, []).append(r.signature)
    within = [normalized_entropy(v) for v in fam.values() if len(v) > 1]
    return {
        "episodes": n,
        "questions": len({r.question_id for r in recs}),
        "success_rate": sum(bool(r.correct) for r in recs) / max(1, n),
        "policy_tokens": sum(r.num_policy_tokens for r in recs),
        "tokens": sum(r.num_tokens or 0 for r in recs),
        "searches_per_episode": sum(len(r.queries) for r in recs) / max(1, n),
        "strategies": dict(Counter(r.meta.get("scripted_strategy") for r in recs).most_common()),
        "env_strategies": dict(Counter(r.strategy for r in recs).most_common()),
        "distinct_signatures": len(set(sigs)),
        "signature_entropy_norm": normalized_entropy(sigs, support) if n else math.nan,
        "signature_entropy_norm_within_family": sum(within) / len(within) if within else 0.0,
    }


def summarize_pair(sets: dict[str, list[dict]]) -> dict[str, dict]:
    """Summaries of both sets, entropies normalised over the same signature support."""
    support = len({r["signature"] for recs in sets.values() for r in recs})
    return {k: set_summary(v, support) for k, v in sets.items()}


def format_summary(summ: dict[str, dict]) -> str:
    keys = ["episodes", "questions", "success_rate", "policy_tokens", "tokens", "searches_per_episode",
            "distinct_signatures", "signature_entropy_norm", "signature_entropy_norm_within_family"]
    kinds = list(summ)
    lines = [f"{'':40s}" + "".join(f"{k:>12s}" for k in kinds)]
    for key in keys:
        vals = [summ[k][key] for k in kinds]
        lines.append(f"{key:40s}" + "".join(f"{v:12.3f}" if isinstance(v, float) else f"{v:12d}" for v in vals))
    for k in kinds:
        lines.append(f"{k} strategies: {summ[k]['strategies']}")
    return "\n".join(lines)


def write_demos(records: Sequence[dict], out: str | Path) -> None:
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
