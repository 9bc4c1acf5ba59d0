"""verl backend, data: searchgym envs as verl's RL dataset, and the envs behind it.

- :func:`export_parquet` / :func:`export_rows`: a split of an env as verl's RL dataset
  (``data_source``, ``prompt``, ``ability``, ``reward_model.ground_truth``, ``extra_info``
  with the env id, split and question index, ``agent_name``);
- :func:`resolve_row` / :func:`locate_row_question` / :func:`validate_rows`: which env and
  question a dataset row means (searchgym's exports and Search-R1 parquets as they are);
- :data:`ENV_POOL`: the per-process envs the agent loop (:mod:`.verl_loop`) runs episodes in.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Sequence

import gymnasium
import pyarrow as pa
import pyarrow.parquet as pq

import searchgym.envs  # noqa: F401  (registers searchgym/* ids)
from searchgym.agents.trajectory import question_count
from searchgym.envs.registry import NAMESPACE, TASKS, env_for_data_source, load_persistent_tasks, task_questions
from searchgym.envs.reward import normalize_answer
from searchgym.retrieval import RemoteRetriever
from searchgym.retrieval.fileio import atomic_path, check_output

__all__ = ["AGENT_NAME", "VerlBackendError", "make_env", "ENV_POOL", "plain", "resolve_row", "locate_row_question",
           "validate_rows", "EXPORT_METADATA_KEY", "is_export_parquet", "export_rows", "export_parquet",
           "write_export_parquet"]

#: The ``agent_name`` under which ``configs/verl/agent_loops.yaml`` registers the loop.
AGENT_NAME = "searchgym_env"


class VerlBackendError(ValueError):
    """A verl-backend input (config, objective, data) is wrong; the message names it."""


def make_env(env_id: str, **kwargs):
    """``searchgym.envs.make``: ``gymnasium.make`` after importing ``searchgym.envs`` (which
    registers the built-in ids); any gymnasium id registered in the process works."""
    try:
        return gymnasium.make(env_id, **kwargs)
    except gymnasium.error.Error as exc:
        raise VerlBackendError(f"cannot make env {env_id!r}: {exc}") from None


class _EnvPool:
    """Per-process pool of envs keyed by (env id, kwargs): one env per running episode.

    Agent loops are instantiated per sample, so envs (and the retriever they share) must
    outlive them; a released env is reset for its next episode. Thread-safe because
    ``reset``/``step`` run in worker threads.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._free: dict[str, list] = {}
        self._retrievers: dict[str, Any] = {}

    def _retriever(self, url: str):
        with self._lock:
            if url not in self._retrievers:
                self._retrievers[url] = RemoteRetriever(url)
            return self._retrievers[url]

    def acquire(self, env_id: str, kwargs: dict, retriever_url: str | None):
        key = json.dumps([env_id, kwargs, retriever_url], sort_keys=True, default=str)
        with self._lock:
            free = self._free.setdefault(key, [])
            if free:
                return key, free.pop()
        kw = dict(kwargs)
        if retriever_url:
            kw["retriever"] = self._retriever(retriever_url)
        return key, make_env(env_id, **kw)

    def release(self, key: str, env) -> None:
        with self._lock:
            self._free.setdefault(key, []).append(env)

    def clear(self) -> None:
        with self._lock:
            for envs in self._free.values():
                for env in envs:
                    env.close()
            self._free.clear()


ENV_POOL = _EnvPool()


def plain(value: Any) -> Any:
    """numpy/omegaconf containers -> plain Python (dataset rows arrive as numpy objects)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return plain(value.tolist())
    if isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "keys")):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _row_question(row: dict) -> str | None:
    extra = row.get("extra_info") or {}
    q = extra.get("question") if isinstance(extra, dict) else None
    if isinstance(q, str) and q.strip():
        return q.strip()
    prompt = row.get("raw_prompt") or row.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        text = str(prompt[-1].get("content", ""))
        return (text.rsplit("Question:", 1)[1] if "Question:" in text else text).strip()
    return None


def _row_targets(row: dict) -> list[str] | None:
    try:
        target = row["reward_model"]["ground_truth"]["target"]
    except (KeyError, TypeError):
        return None
    return [target] if isinstance(target, str) else [str(t) for t in target]


def resolve_row(row: dict, data_source_map: dict | None = None) -> tuple[str, str, int | None, bool]:
    """``(env_id, split, index, mapped)`` of one verl dataset row, as the agent loop uses it.

    A row exported by searchgym names its env in ``extra_info.env_id``; any other row (a
    Search-R1 parquet as it is) is mapped by its ``data_source``: ``data_source_map``
    first, then a registered id / task name equal to it, then the task whose
    ``data_sources`` list it (``mapped`` is then True and the question is located by index
    and checked by its answers). Raises ``VerlBackendError`` naming what is missing.
    """
    extra = row.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise VerlBackendError(f"extra_info must be a mapping, got {type(extra).__name__}")
    split = extra.get("split") or "train"
    index = extra.get("index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise VerlBackendError(f"extra_info.index must be an int >= 0, got {index!r}")
    if extra.get("env_id"):
        if index is None:
            raise VerlBackendError("the row names extra_info.env_id but no extra_info.index")
        return str(extra["env_id"]), str(split), int(index), False
    ds = row.get("data_source")
    env_id = (data_source_map or {}).get(ds) if isinstance(ds, str) else None
    if env_id is None:
        try:
            env_id = env_for_data_source(ds)
        except ValueError as exc:
            raise VerlBackendError(str(exc)) from None
    if env_id is None:
        raise VerlBackendError(
            f"the row has no extra_info.env_id and its data_source {ds!r} is no registered task; list it in a "
            f"task file (data_sources: [{ds}]; `searchgym task add FILE`) or pass --data-source {ds}=ENV_ID"
        )
    return env_id, str(split), (int(index) if index is not None else None), True


def locate_row_question(questions: Sequence, row: dict, index: int | None, where: str = "env") -> int:
    """Index of the row's question in ``questions`` (a sequence of ``Question``: a task's
    list, or a live env's as :class:`~searchgym.agents.trajectory.EnvQuestions`): ``index``
    when that question has the row's gold answers, else the question with the row's text
    (and answers)."""
    targets = _row_targets(row)
    norm = sorted(normalize_answer(t) for t in targets) if targets is not None else None

    def same_answers(q) -> bool:
        return norm is None or sorted(normalize_answer(g) for g in q.golden_answers) == norm

    if index is not None and 0 <= index < len(questions) and same_answers(questions[index]):
        return index
    text = _row_question(row)
    if text:
        for i, q in enumerate(questions):
            if q.question.strip() == text and same_answers(q):
                return i
    raise VerlBackendError(f"{where}: no question matches the row (index {index}, question {text!r:.80}, "
                           f"answers {targets}); is the task's QA file the parquet this row came from?")


def validate_rows(files: list[str], data_source_map: dict | None = None, limit_errors: int = 1) -> dict:
    """Check verl RL parquet files against what :class:`SearchEnvAgentLoop` needs, before a
    launch builds or writes anything: readable, a chat ``prompt`` and
    ``reward_model.ground_truth.target`` per row, an env for each row (``resolve_row``)
    that is registered, and (user tasks) a question for each row. Reads QA files only: no
    world, index or model is built. Returns ``{file: rows}``; raises ``VerlBackendError``
    naming the file, the first bad row and how many rows are bad.
    """
    load_persistent_tasks()
    counts: dict[str, int] = {}
    questions_cache: dict[tuple[str, str], list] = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise VerlBackendError(f"data file {f} does not exist")
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise VerlBackendError(f"{f}: not a readable parquet ({type(exc).__name__}: {exc})") from None
        if not rows:
            raise VerlBackendError(f"{f}: no rows")
        bad: list[str] = []
        for i, row in enumerate(rows):
            try:
                prompt = row.get("prompt")
                if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) and "content" in m
                                                                         for m in prompt):
                    raise VerlBackendError("'prompt' must be a non-empty chat list of {role, content}")
                if _row_targets(row) is None:
                    raise VerlBackendError("missing reward_model.ground_truth.target")
                env_id, split, index, mapped = resolve_row(row, data_source_map)
                if env_id not in gymnasium.registry:
                    raise VerlBackendError(f"env {env_id!r} is not registered (`searchgym envs list`)")
                name = env_id.split("/", 1)[1] if env_id.startswith(NAMESPACE + "/") else None
                spec = TASKS.get(name) if name else None
                if spec is not None and not spec.families:  # a user task: its questions are cheap to read
                    key = (env_id, split)
                    if key not in questions_cache:
                        questions_cache[key] = task_questions(spec, split)
                    qs = questions_cache[key]
                    if mapped:
                        locate_row_question(qs, row, index, where=env_id)
                    elif not 0 <= index < len(qs):
                        raise VerlBackendError(f"extra_info.index {index} is out of range for {env_id} [{split}] "
                                               f"({len(qs)} questions)")
            except (VerlBackendError, ValueError, OSError) as exc:
                bad.append(f"row {i}: {exc}")
        if bad:
            more = f" ({len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
            raise VerlBackendError(f"{f}: {bad[0]}{more}")
        counts[str(f)] = len(rows)
    return counts


EXPORT_METADATA_KEY = b"searchgym"


def is_export_parquet(path: str | Path) -> bool:
    """True iff ``path`` is a parquet written by :func:`export_parquet` (its schema
    metadata, or for older exports the ``agent_name`` + ``extra_info`` columns)."""
    try:
        schema = pq.read_schema(path)
    except Exception:  # not a parquet at all
        return False
    if schema.metadata and EXPORT_METADATA_KEY in schema.metadata:
        return True
    return {"agent_name", "extra_info", "data_source"} <= set(schema.names)


def export_rows(env_id: str, split: str = "train", limit: int | None = None, env_kwargs: dict | None = None,
                agent_name: str = AGENT_NAME) -> list[dict]:
    """verl RL-dataset rows for questions ``0..n-1`` of ``env_id``'s ``split``.

    Each row's prompt is the env's own ``reset`` prompt for that question, so the row and
    the episode the agent loop runs agree.
    """
    env = make_env(env_id, split=split, **(env_kwargs or {}))
    try:
        try:
            total = question_count(env)
        except KeyError:  # a reset info without num_questions: not a searchgym env
            raise VerlBackendError(f"env {env_id!r} gives no info['num_questions']; cannot enumerate split "
                                   f"{split!r}") from None
        n = total if limit is None else min(limit, total)
        if n == 0:
            raise VerlBackendError(f"env {env_id!r} has no questions in split {split!r}")
        rows = []
        for i in range(n):
            prompt, info = env.reset(options={"index": i})
            rows.append(
                {
                    "data_source": env_id,
                    "prompt": [{"role": "user", "content": prompt}],
                    "ability": "search",
                    "reward_model": {
                        "style": "rule",
                        "ground_truth": {"target": [str(a) for a in info.get("golden_answers", ())]},
                    },
                    "extra_info": {
                        "env_id": env_id,
                        "split": split,
                        "index": i,
                        "question_id": str(info.get("question_id", i)),
                        "family": str(info.get("family", "")),
                        "question": str(info.get("question", "")),
                        "env_kwargs": json.dumps(env_kwargs or {}, sort_keys=True),
                    },
                    "agent_name": agent_name,
                }
            )
        return rows
    finally:
        env.close()


def export_parquet(env_id: str, out: str | Path, split: str = "train", limit: int | None = None,
                   env_kwargs: dict | None = None, agent_name: str = AGENT_NAME, force: bool = False) -> Path:
    """Write ``env_id``'s ``split`` as a verl RL parquet at ``out`` (atomically); return it.

    An existing ``out`` that is not such an export (e.g. the dataset's own parquet) is
    refused before the env is made, unless ``force``."""
    out = Path(out)
    if out.suffix != ".parquet":
        raise VerlBackendError(f"--out {out} must end in .parquet")
    check_output(out, is_export_parquet, "a `searchgym export verl` parquet", kind="file", force=force)
    rows = export_rows(env_id, split=split, limit=limit, env_kwargs=env_kwargs, agent_name=agent_name)
    return write_export_parquet(rows, out, env_id, split)


def write_export_parquet(rows: list[dict], out: str | Path, env_id: str, split: str) -> Path:
    """Write :func:`export_rows` rows at ``out`` atomically, marked as a searchgym export."""
    out = Path(out)
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           EXPORT_METADATA_KEY: json.dumps({"env_id": env_id, "split": split}).encode()})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out
