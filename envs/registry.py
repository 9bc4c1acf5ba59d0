"""Task registry: the built-in ``searchgym/...`` ids and user-registered QA sets.

Built-in ids (registered with gymnasium on ``import searchgym.envs``)::

    searchgym/SingleHop-v0  searchgym/MultiHop-v0  searchgym/Comparison-v0
    searchgym/MultiAnswer-v0  searchgym/Mixed-v0

They take ``split`` ("train" | "validation" | "test"), ``preset`` ("small"), ``seed`` (0),
``world_dir`` (default: the cached world under ``$SEARCHGYM_HOME/worlds``, built lazily),
``index_dir`` (default ``<world_dir>/index-<retriever>``), ``retriever`` (a Retriever
object, or "dense" (default) | "bm25"), ``config`` (an :class:`EnvConfig`) and any
``EnvConfig`` field as a keyword (``topk=5``, ``max_turns=6``, ...).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from searchgym.envs.env import EnvConfig, SearchEnv
from searchgym.envs.tasks import SPLITS, Question, TaskFormatError, read_questions

NAMESPACE = "searchgym"
WORLD_TASKS = {
    "SingleHop-v0": ("single_hop",),
    "MultiHop-v0": ("multi_hop",),
    "Comparison-v0": ("comparison",),
    "MultiAnswer-v0": ("multi_answer",),
    "Mixed-v0": ("single_hop", "multi_hop", "comparison", "multi_answer"),
}


@dataclass(frozen=True)
class TaskSpec:
    """What an env id is made of: a world family set, or a user QA set + corpus/index."""

    name: str
    families: tuple[str, ...] = ()  # world task
    qa: dict[str, str] = field(default_factory=dict)  # user task: split -> path
    corpus_or_index: str | None = None
    retriever: str = "dense"
    config: EnvConfig = field(default_factory=EnvConfig)


TASKS: dict[str, TaskSpec] = {}


def _resolve_retriever(retriever: Any, index_dir: Path | None, corpus: Path | None, cache_dir: Path):
    """A Retriever object from an object, or a kind + index dir (built from corpus if needed)."""
    from searchgym.retrieval import build_index, load_retriever

    if not isinstance(retriever, str):
        if not hasattr(retriever, "search"):
            raise ValueError(f"retriever must be 'dense', 'bm25' or an object with search(); got {retriever!r}")
        return retriever
    if retriever not in ("dense", "bm25"):
        raise ValueError(f"unknown retriever {retriever!r}; choose 'dense', 'bm25' or pass a Retriever")
    if index_dir is None:
        if corpus is None:
            raise ValueError("need index_dir or a corpus to build an index from")
        index_dir = cache_dir / f"index-{retriever}"
        if not (index_dir / "manifest.json").is_file():
            build_index(corpus, index_dir, kind=retriever)
    return load_retriever(index_dir)  # memoised per process: envs share one retriever


def _make_env(task: str, split: str = "train", preset: str = "small", seed: int = 0,
              world_dir: str | Path | None = None, index_dir: str | Path | None = None,
              retriever: Any = None, config: EnvConfig | None = None,
              render_mode: str | None = None, **config_kwargs) -> SearchEnv:
    """Entry point of every registered id (see the module docstring for the kwargs)."""
    from searchgym.envs import world as W

    spec = TASKS[task]
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    cfg = EnvConfig.from_kwargs(config or spec.config, **config_kwargs)
    retriever = retriever if retriever is not None else spec.retriever
    if spec.families:
        wdir = Path(world_dir) if world_dir is not None else W.ensure_world(preset, seed)
        questions = [q for q in W.load_questions(wdir, split) if q.family in spec.families]
        if not questions:
            raise ValueError(f"{wdir}: no {'/'.join(spec.families)} questions in split {split!r}")
        if isinstance(retriever, str) and index_dir is None:
            index_dir = W.ensure_index(wdir, retriever)
        r = _resolve_retriever(retriever, Path(index_dir) if index_dir else None, None, wdir)
    else:
        questions = load_split(spec, split)
        src = Path(spec.corpus_or_index)
        if index_dir is None and src.is_dir():
            index_dir = src
        r = _resolve_retriever(retriever, Path(index_dir) if index_dir else None,
                               src if src.is_file() else None, _task_cache_dir(spec))
    return SearchEnv(questions, r, cfg, split=split, render_mode=render_mode)


def _task_cache_dir(spec: TaskSpec) -> Path:
    from searchgym.envs.world import searchgym_home

    src = Path(spec.corpus_or_index)
    st = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return searchgym_home() / "tasks" / f"{spec.name}-{key}"


def load_qa(path: str | Path, split: str = "train") -> list[Question]:
    """Load a QA file: Search-R1 parquet (``prompt``, ``reward_model.ground_truth.target``,
    optional ``question``, ``extra_info.split``) or JSONL (``question``, ``golden_answers``).

    Rows of a parquet whose ``extra_info.split`` names another split are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QA file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise TaskFormatError(f"{path}: cannot read parquet ({exc})") from None
        out = []
        for i, row in enumerate(rows):
            where = f"{path}: row {i}"
            extra = row.get("extra_info") or {}
            row_split = extra.get("split") if isinstance(extra, dict) else None
            if row_split and row_split != split and row_split in SPLITS:
                continue
            q = row.get("question")
            if not isinstance(q, str):
                prompt = row.get("prompt")
                if not isinstance(prompt, list) or not prompt or not isinstance(prompt[-1], dict):
                    raise TaskFormatError(f"{where}: needs 'question' or a chat 'prompt' list")
                q = str(prompt[-1].get("content", ""))
                if "Question:" in q:  # Search-R1 prompts end with "Question: {q}\n"
                    q = q.rsplit("Question:", 1)[1]
                q = q.strip()
            try:
                target = row["reward_model"]["ground_truth"]["target"]
            except (KeyError, TypeError):
                raise TaskFormatError(f"{where}: missing reward_model.ground_truth.target") from None
            rec = {"id": f"{path.stem}-{i}", "question": q, "golden_answers": list(target) if not isinstance(target, str) else [target],
                   "split": split}
            out.append(Question.from_json(rec, where=where))
        return out
    if path.suffix in (".jsonl", ".json"):
        return [q if q.split == split else Question(**{**q.__dict__, "split": split}) for q in read_questions(path)]
    raise TaskFormatError(f"{path}: unsupported QA format {path.suffix!r}; use .parquet or .jsonl")


def load_split(spec: TaskSpec, split: str) -> list[Question]:
    if split not in spec.qa:
        raise ValueError(f"task {spec.name!r} has no {split!r} split; it has {sorted(spec.qa)}")
    qs = load_qa(spec.qa[split], split)
    if not qs:
        raise ValueError(f"{spec.qa[split]}: no questions for split {split!r}")
    return qs


def register_task(name: str, qa: str | Path | dict, corpus_or_index: str | Path, reward: str = "em",
                  retriever: str = "bm25", config: EnvConfig | None = None, **config_kwargs) -> str:
    """Register a user QA set + corpus (JSONL, indexed lazily) or index dir as ``searchgym/<name>``.

    ``qa`` is one file (used for every split) or ``{"train": path, "test": path, ...}``.
    Returns the env id. Re-registering a name replaces it.
    """
    if not name or "/" in name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"task name must be alphanumeric (with - _ .), got {name!r}")
    qa_map = {str(k): str(v) for k, v in qa.items()} if isinstance(qa, dict) else {s: str(qa) for s in SPLITS}
    for s, p in qa_map.items():
        if s not in SPLITS:
            raise ValueError(f"unknown split {s!r} in qa; choose from {list(SPLITS)}")
        if not Path(p).is_file():
            raise FileNotFoundError(f"QA file not found: {p}")
    src = Path(corpus_or_index)
    if not src.exists():
        raise FileNotFoundError(f"corpus or index not found: {src}")
    cfg = EnvConfig.from_kwargs(config, reward=reward, **config_kwargs)
    TASKS[name] = TaskSpec(name=name, qa=qa_map, corpus_or_index=str(src), retriever=retriever, config=cfg)
    env_id = f"{NAMESPACE}/{name}"
    if env_id in gym.registry:
        del gym.registry[env_id]
    gym.register(id=env_id, entry_point="searchgym.envs.registry:_make_env", kwargs={"task": name},
                 disable_env_checker=False)
    return env_id


def _register_builtin() -> None:
    for name, fams in WORLD_TASKS.items():
        TASKS[name] = TaskSpec(name=name, families=fams)
        env_id = f"{NAMESPACE}/{name}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="searchgym.envs.registry:_make_env", kwargs={"task": name})


def make(env_id: str, **kwargs) -> gym.Env:
    """``gymnasium.make`` for searchgym ids (``"searchgym/MultiHop-v0"`` or ``"MultiHop-v0"``)."""
    if "/" not in env_id:
        env_id = f"{NAMESPACE}/{env_id}"
    if env_id not in gym.registry:
        raise ValueError(f"unknown env id {env_id!r}; registered: {list_envs()}")
    return gym.make(env_id, **kwargs)


def make_batch(env_id: str, n: int, **kwargs) -> list[SearchEnv]:
    """``n`` unwrapped envs of one id sharing one retriever (for :func:`step_batch`)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    first = make(env_id, **kwargs).unwrapped
    out = [first]
    for _ in range(n - 1):
        out.append(SearchEnv(first.questions, first.retriever, first.config, split=first.split))
    return out


def list_envs() -> list[str]:
    """The registered ``searchgym/...`` ids."""
    return sorted(k for k in gym.registry if k.startswith(NAMESPACE + "/"))


def describe(env_id: str) -> dict:
    name = env_id.split("/", 1)[1]
    spec = TASKS.get(name)
    if spec is None:
        return {"id": env_id}
    if spec.families:
        return {"id": env_id, "kind": "world", "families": list(spec.families), "retriever": spec.retriever}
    return {"id": env_id, "kind": "user", "qa": spec.qa, "corpus_or_index": spec.corpus_or_index,
            "retriever": spec.retriever, "reward": spec.config.reward}


_register_builtin()
