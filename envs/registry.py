"""Task registry: the built-in ``searchgym/...`` ids and user tasks that outlive a process.

Built-in ids (registered with gymnasium on ``import searchgym.envs``)::

    searchgym/SingleHop-v0  searchgym/MultiHop-v0  searchgym/Comparison-v0
    searchgym/MultiAnswer-v0  searchgym/Mixed-v0

They take ``split`` ("train" | "validation" | "test"), ``preset`` ("small"), ``seed`` (0),
``world_dir`` (default: the cached world under ``$SEARCHGYM_HOME/worlds``, built lazily),
``index_dir`` (default ``<world_dir>/index-<retriever>``), ``retriever`` (a Retriever
object, or "dense" (default) | "bm25"), ``config`` (an :class:`EnvConfig`) and any
``EnvConfig`` field as a keyword (``topk=5``, ``max_turns=6``, ...).

User tasks are declarative records (a YAML task file, see :func:`task_from_record`)::

    name: foldoc                    # env id searchgym/foldoc
    qa: qa.parquet                  # one file for every split, or {train: ..., test: ...}
    corpus: corpus.jsonl            # Search-R1 JSONL, indexed lazily and cached by content
    # index: e5-index/              # ... or an index folder (`searchgym index build|import`)
    retriever: bm25                 # bm25 | dense (for a corpus)
    encoder: /models/e5-base-v2     # dense only; default the bundled all-MiniLM-L6-v2
    query_prefix: "query: "
    passage_prefix: "passage: "
    prompt: dataset                 # dataset (the rows' own prompt) | searchgym
    data_sources: [nq, hotpotqa]    # Search-R1 parquet ``data_source`` values served by this task
    env: {topk: 3, doc_chars: 2000, reward: em}

Relative paths are relative to the task file. They are registered from three places, in
this order (later wins): the ``searchgym.tasks`` entry-point group (a package's tasks: an
entry point loads to a task-file path, a record dict, a list of them, or a callable
returning those), the task files under ``$SEARCHGYM_HOME/tasks/`` (``searchgym task add``,
and :func:`register_task`, which writes the same record), and :func:`register_task` calls
in the process. Each gymnasium registration carries the whole record in its kwargs, so a
pickled ``EnvSpec`` makes the env in any process (a Ray worker) without the task files.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import gymnasium as gym

from searchgym.envs.env import EnvConfig, SearchEnv
from searchgym.envs.protocol import EXTERNAL_PROMPT
from searchgym.envs.tasks import SPLITS, Question, TaskFormatError, prompt_text, read_questions
from searchgym.envs.world_cache import ensure_index, ensure_world, searchgym_home
from searchgym.envs.world_io import load_questions
from searchgym.retrieval.fileio import atomic_write_text, iter_jsonl
from searchgym.retrieval.index import build_index, file_sha256, load_retriever

NAMESPACE = "searchgym"
ENTRY_POINT_GROUP = "searchgym.tasks"
WORLD_TASKS = {
    "SingleHop-v0": ("single_hop",),
    "MultiHop-v0": ("multi_hop",),
    "Comparison-v0": ("comparison",),
    "MultiAnswer-v0": ("multi_answer",),
    "Mixed-v0": ("single_hop", "multi_hop", "comparison", "multi_answer"),
}
#: Question family -> the built-in id serving it alone; ``mixed`` (and ``""``) -> every family.
FAMILY_ENV = {
    "": f"{NAMESPACE}/Mixed-v0",
    "mixed": f"{NAMESPACE}/Mixed-v0",
    **{fams[0]: f"{NAMESPACE}/{name}" for name, fams in WORLD_TASKS.items() if len(fams) == 1},
    "multihop": f"{NAMESPACE}/MultiHop-v0",  # older spelling, kept for configs that use it
}
PROMPTS = ("dataset", "searchgym")
#: EnvConfig defaults of external tasks: whole passages (Search-R1 returns them whole), each
#: bounded at 2000 characters, and room for topk 3 of them in one observation.
EXTERNAL_ENV_DEFAULTS = {"doc_chars": 2000, "max_obs_chars": 8192}
_RECORD_KEYS = {"name", "qa", "corpus", "index", "retriever", "encoder", "query_prefix", "passage_prefix",
                "prompt", "env", "data_sources", "description"}


@dataclass(frozen=True)
class TaskSpec:
    """What an env id is made of: a world family set, or a user QA set + corpus/index."""

    name: str
    families: tuple[str, ...] = ()  # world task
    qa: dict[str, str] = field(default_factory=dict)  # user task: split -> path
    corpus_or_index: str | None = None
    retriever: str = "dense"
    config: EnvConfig = field(default_factory=EnvConfig)
    prompt: str = "searchgym"
    encoder: str | None = None
    query_prefix: str = ""
    passage_prefix: str = ""
    data_sources: tuple[str, ...] = ()
    description: str = ""
    source: str = "python"  # builtin | python | a task-file path | "entry point NAME"

    @property
    def env_id(self) -> str:
        return f"{NAMESPACE}/{self.name}"

    def to_record(self) -> dict:
        """The task as a plain record (absolute paths, the full EnvConfig): what task files
        and the gymnasium registration hold."""
        src = self.corpus_or_index or ""
        rec: dict[str, Any] = {"name": self.name}
        rec["qa"] = dict(self.qa)
        rec["index" if Path(src).is_dir() else "corpus"] = src
        rec.update(retriever=self.retriever, encoder=self.encoder, query_prefix=self.query_prefix,
                   passage_prefix=self.passage_prefix, prompt=self.prompt,
                   env={f.name: getattr(self.config, f.name) for f in fields(EnvConfig)},
                   data_sources=list(self.data_sources))
        if self.description:
            rec["description"] = self.description
        return rec


TASKS: dict[str, TaskSpec] = {}


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or \
            not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise TaskFormatError(f"{where}: task name must be alphanumeric (with - _ .), got {name!r}")
    if name in WORLD_TASKS:
        raise TaskFormatError(f"{where}: task name {name!r} is a built-in id; choose another name")
    return name


def task_from_record(record: Any, base_dir: str | Path | None = None, where: str = "task record",
                     check_files: bool = True, source: str = "python") -> TaskSpec:
    """Validate a task record (the mapping of a task file) and build its :class:`TaskSpec`.

    Unknown keys, wrong types and a missing ``qa`` / ``corpus``-or-``index`` raise
    ``TaskFormatError`` naming ``where`` and the key. Relative paths resolve against
    ``base_dir``. With ``check_files``, every named file must exist (``FileNotFoundError``).
    """
    if not isinstance(record, dict):
        raise TaskFormatError(f"{where}: a task is a mapping with at least name, qa and corpus (or index)")
    bad = sorted(set(record) - _RECORD_KEYS)
    if bad:
        raise TaskFormatError(f"{where}: unknown key(s) {bad}; valid: {sorted(_RECORD_KEYS)}")
    name = _check_name(record.get("name"), where)
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    def path(value: Any, key: str) -> str:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise TaskFormatError(f"{where}: {key} must be a path, got {value!r}")
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    qa = record.get("qa")
    if qa is None:
        raise TaskFormatError(f"{where}: missing key 'qa' (a QA file, or a mapping split -> file)")
    if isinstance(qa, dict):
        if not qa:
            raise TaskFormatError(f"{where}: qa is an empty mapping")
        for s in qa:
            if s not in SPLITS:
                raise TaskFormatError(f"{where}: qa: unknown split {s!r}; choose from {list(SPLITS)}")
        qa_map = {str(s): path(p, f"qa.{s}") for s, p in qa.items()}
    else:
        one = path(qa, "qa")
        qa_map = {s: one for s in SPLITS}
    if ("corpus" in record) == ("index" in record):
        raise TaskFormatError(f"{where}: give exactly one of 'corpus' (a Search-R1 JSONL) or 'index' (an index folder)")
    src = path(record.get("corpus", record.get("index")), "corpus" if "corpus" in record else "index")
    retriever = record.get("retriever", "bm25")
    if retriever not in ("bm25", "dense"):
        raise TaskFormatError(f"{where}: retriever must be 'bm25' or 'dense', got {retriever!r}")
    encoder = record.get("encoder")
    if encoder is not None:
        encoder = path(encoder, "encoder")
    strings = {}
    for key in ("query_prefix", "passage_prefix", "description"):
        v = record.get(key) or ""
        if not isinstance(v, str):
            raise TaskFormatError(f"{where}: {key} must be a string, got {v!r}")
        strings[key] = v
    prompt = record.get("prompt", "dataset")
    if prompt not in PROMPTS:
        raise TaskFormatError(f"{where}: prompt must be one of {list(PROMPTS)}, got {prompt!r}")
    env = record.get("env") or {}
    if not isinstance(env, dict):
        raise TaskFormatError(f"{where}: env must be a mapping of EnvConfig fields, got {env!r}")
    try:
        cfg = EnvConfig.from_kwargs(None, **{**EXTERNAL_ENV_DEFAULTS, **env})
    except (TypeError, ValueError) as exc:
        raise TaskFormatError(f"{where}: env: {exc}") from None
    ds = record.get("data_sources") or []
    if isinstance(ds, str):
        ds = [ds]
    if not isinstance(ds, (list, tuple)) or not all(isinstance(x, str) and x for x in ds):
        raise TaskFormatError(f"{where}: data_sources must be a list of strings, got {ds!r}")
    if check_files:
        for s, p in qa_map.items():
            if not Path(p).is_file():
                raise FileNotFoundError(f"{where}: QA file not found: {p}")
        if not Path(src).exists():
            raise FileNotFoundError(f"{where}: corpus or index not found: {src}")
        if encoder is not None and not Path(encoder).is_dir():
            raise FileNotFoundError(f"{where}: encoder folder not found: {encoder}")
    return TaskSpec(name=name, qa=qa_map, corpus_or_index=src, retriever=retriever, config=cfg, prompt=prompt,
                    encoder=encoder, query_prefix=strings["query_prefix"], passage_prefix=strings["passage_prefix"],
                    data_sources=tuple(ds), description=strings["description"], source=source)


def read_task_file(path: str | Path, check_files: bool = True) -> TaskSpec:
    """Parse a YAML task file (paths relative to it)."""
    import yaml  # lazy: 10-20 ms of `import searchgym.envs` (measured), paid only with task files

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: task file not found")
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TaskFormatError(f"{path}: not valid YAML ({first})") from None
    return task_from_record(record, base_dir=path.parent.resolve(), where=str(path), check_files=check_files,
                            source=str(path))


def tasks_home() -> Path:
    """Where persistent task files live: ``$SEARCHGYM_HOME/tasks``."""
    return searchgym_home() / "tasks"


def task_file_path(name: str) -> Path:
    return tasks_home() / f"{_check_name(name, 'task')}.yaml"


def _register_gym(spec: TaskSpec) -> str:
    TASKS[spec.name] = spec
    env_id = spec.env_id
    if env_id in gym.registry:
        del gym.registry[env_id]
    gym.register(id=env_id, entry_point="searchgym.envs.registry:_make_env",
                 kwargs={"task": spec.name, "task_record": spec.to_record()}, disable_env_checker=False)
    return env_id


def save_task(spec: TaskSpec, force: bool = False) -> Path:
    """Write ``spec``'s record to ``$SEARCHGYM_HOME/tasks/<name>.yaml`` (atomically) and
    register it. A different task already stored under the name is refused unless ``force``."""
    import yaml  # lazy, as in read_task_file

    path = task_file_path(spec.name)
    record = spec.to_record()
    if path.is_file() and not force:
        try:
            old = read_task_file(path, check_files=False).to_record()
        except (TaskFormatError, OSError):
            old = None
        if old != record:
            raise FileExistsError(f"{path}: a different task {spec.name!r} is stored there; "
                                  f"`searchgym task rm {spec.name}` first or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "# searchgym task (written by `searchgym task add` / register_task)\n"
                      + yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    _register_gym(TaskSpec(**{**spec.__dict__, "source": str(path)}))
    return path


def remove_task(name: str) -> Path:
    """Delete the stored task file of ``name`` and unregister it in this process."""
    path = task_file_path(name)
    if not path.is_file():
        spec = TASKS.get(name)
        if spec is not None and spec.source.startswith("entry point"):
            raise ValueError(f"task {name!r} comes from the {spec.source} (package {ENTRY_POINT_GROUP}); "
                             "uninstall the package to remove it")
        raise FileNotFoundError(f"no stored task {name!r} (looked for {path})")
    path.unlink()
    TASKS.pop(name, None)
    gym.registry.pop(f"{NAMESPACE}/{name}", None)
    return path


def _entry_point_specs() -> list[TaskSpec]:
    specs = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name} ({ep.value})"
        try:
            value = ep.load()
            if callable(value):
                value = value()
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, (str, os.PathLike)):
                    spec = read_task_file(item, check_files=False)
                else:
                    spec = task_from_record(item, where=where, check_files=False)
                specs.append(TaskSpec(**{**spec.__dict__, "source": f"entry point {ep.name}"}))
        except Exception as exc:  # a broken package must not break `import searchgym.envs`
            warnings.warn(f"searchgym: skipping tasks of {where}: {exc}", stacklevel=2)
    return specs


def load_persistent_tasks() -> list[str]:
    """Register the entry-point tasks, then the task files under ``$SEARCHGYM_HOME/tasks``
    (a broken file is skipped with a warning naming it). Returns the env ids registered."""
    ids = [_register_gym(s) for s in _entry_point_specs()]
    home = tasks_home()
    if home.is_dir():
        for path in sorted(home.glob("*.yaml")):
            try:
                ids.append(_register_gym(read_task_file(path, check_files=False)))
            except (TaskFormatError, OSError) as exc:
                warnings.warn(f"searchgym: skipping task file {exc}", stacklevel=2)
    return ids


def user_tasks() -> list[TaskSpec]:
    return [s for s in TASKS.values() if not s.families]


# ----------------------------------------------------------------------------- making envs


def _file_sha256_memo(path: Path) -> str:
    """sha256 of a file, memoised on disk by (path, size, mtime) under the index cache."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = index_cache_root() / "hashes" / key
    try:
        value = memo.read_text(encoding="ascii").strip()
        if len(value) == 64:
            return value
    except OSError:
        pass
    value = file_sha256(path)
    try:
        atomic_write_text(memo, value + "\n")
    except OSError:
        pass
    return value


def index_cache_root() -> Path:
    return searchgym_home() / "indexes"


def index_cache_dir(corpus: str | Path, retriever: str, encoder: str | None = None, query_prefix: str = "",
                    passage_prefix: str = "") -> Path:
    """Where the index of ``corpus`` is cached: ``$SEARCHGYM_HOME/indexes/<corpus sha256[:16]>-
    <retriever>[-<encoder key>]``. Keyed by content, so one corpus under many task names (or
    paths) is indexed once."""
    sha = _file_sha256_memo(Path(corpus))
    name = f"{sha[:16]}-{retriever}"
    if retriever == "dense":
        enc = str(Path(encoder).expanduser().resolve()) if encoder else "default"
        name += "-" + hashlib.sha256(f"{enc}|{query_prefix}|{passage_prefix}".encode()).hexdigest()[:10]
    return index_cache_root() / name


def _resolve_retriever(retriever: Any, index_dir: Path | None, corpus: Path | None, spec: TaskSpec | None = None):
    """A Retriever object from an object, or a kind + index dir (built from corpus if needed)."""
    if not isinstance(retriever, str):
        if not hasattr(retriever, "search"):
            raise ValueError(f"retriever must be 'dense', 'bm25' or an object with search(); got {retriever!r}")
        return retriever
    if retriever not in ("dense", "bm25"):
        raise ValueError(f"unknown retriever {retriever!r}; choose 'dense', 'bm25' or pass a Retriever")
    if index_dir is None:
        if corpus is None:
            raise ValueError("need index_dir or a corpus to build an index from")
        enc = spec.encoder if spec is not None else None
        qp = spec.query_prefix if spec is not None else ""
        pp = spec.passage_prefix if spec is not None else ""
        index_dir = index_cache_dir(corpus, retriever, enc, qp, pp)
        if not (index_dir / "manifest.json").is_file():
            kw = {"encoder": enc, "query_prefix": qp, "passage_prefix": pp} if retriever == "dense" else {}
            build_index(corpus, index_dir, kind=retriever, **kw)
    return load_retriever(index_dir)  # memoised per process: envs share one retriever


def _make_env(task: str, split: str = "train", preset: str = "small", seed: int = 0,
              world_dir: str | Path | None = None, index_dir: str | Path | None = None,
              retriever: Any = None, config: EnvConfig | None = None,
              render_mode: str | None = None, task_record: dict | None = None, **config_kwargs) -> SearchEnv:
    """Entry point of every registered id (see the module docstring for the kwargs).

    ``task_record`` (set by the registration) is the user task's full record: the env is
    made from it alone, in any process."""
    if task_record is not None:
        spec = task_from_record(task_record, where=f"env {NAMESPACE}/{task}", check_files=False)
    elif task in TASKS:
        spec = TASKS[task]
    else:
        raise ValueError(f"unknown task {task!r}; registered: {sorted(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    cfg = EnvConfig.from_kwargs(config or spec.config, **config_kwargs)
    retriever = retriever if retriever is not None else spec.retriever
    if spec.families:
        wdir = Path(world_dir) if world_dir is not None else ensure_world(preset, seed)
        questions = [q for q in load_questions(wdir, split) if q.family in spec.families]
        if not questions:
            raise ValueError(f"{wdir}: no {'/'.join(spec.families)} questions in split {split!r}")
        if isinstance(retriever, str) and index_dir is None:
            index_dir = ensure_index(wdir, retriever)
        r = _resolve_retriever(retriever, Path(index_dir) if index_dir else None, None)
    else:
        questions = task_questions(spec, split)
        src = Path(spec.corpus_or_index)
        if not src.exists():
            raise FileNotFoundError(f"task {spec.name!r}: corpus or index not found: {src}")
        if index_dir is None and src.is_dir():
            index_dir = src
        r = _resolve_retriever(retriever, Path(index_dir) if index_dir else None, src if src.is_file() else None, spec)
    return SearchEnv(questions, r, cfg, split=split, render_mode=render_mode)


def _row_split(extra: Any) -> str | None:
    if hasattr(extra, "get"):
        s = extra.get("split")
        return s if isinstance(s, str) and s in SPLITS else None
    return None


def _rows_for_split(rows: list, split: str, row_split) -> list:
    """Rows' own split labels are honoured only where they cover ``split``: when some row
    says ``split``, those rows; otherwise every row (one file serves every split, e.g.
    Search-R1's ``test.parquet`` asked for ``train``)."""
    labelled = [r for r in rows if row_split(r) == split]
    return labelled if labelled else rows


def load_qa(path: str | Path, split: str = "train") -> list[Question]:
    """Load a QA file: Search-R1 parquet (``prompt``, ``reward_model.ground_truth.target``,
    optional ``question``, ``extra_info.split``) or JSONL (``question``, ``golden_answers``,
    optional ``split``, ``prompt``).

    Row split fields are honoured only where they cover ``split`` (see
    :func:`_rows_for_split`): a file never lacks a split. Each question keeps its row's own
    prompt text (``Question.prompt``; a chat list's last message) and gets the label ``split``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QA file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # lazy: 30-70 ms of start-up, needed for parquet QA files only

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise TaskFormatError(f"{path}: cannot read parquet ({exc})") from None
        numbered = _rows_for_split(list(enumerate(rows)), split, lambda r: _row_split(r[1].get("extra_info")))
        out = []
        for i, row in numbered:
            where = f"{path}: row {i}"
            prompt = row.get("prompt")
            q = row.get("question")
            if not isinstance(q, str):
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
            rec = {"id": f"{path.stem}-{i}", "question": q,
                   "golden_answers": list(target) if not isinstance(target, str) else [target],
                   "split": split, "prompt": prompt_text(prompt, where) if prompt is not None else None}
            out.append(Question.from_json(rec, where=where))
        return out
    if path.suffix in (".jsonl", ".json"):
        raw = {lineno: rec for lineno, rec in iter_jsonl(path, TaskFormatError)}
        keep = {n for n, rec in _rows_for_split(list(raw.items()), split,
                                                 lambda r: _row_split(r[1]) if isinstance(r[1], dict) else None)}
        qs = read_questions(path)
        return [Question(**{**q.__dict__, "split": split}) for n, q in zip(raw, qs) if n in keep]
    raise TaskFormatError(f"{path}: unsupported QA format {path.suffix!r}; use .parquet or .jsonl")


def task_questions(spec: TaskSpec, split: str) -> list[Question]:
    """The questions ``spec`` serves for ``split``, with the prompt its ``prompt`` setting
    asks for (``dataset``: the row's own, else :data:`EXTERNAL_PROMPT`; ``searchgym``: the env's)."""
    if split not in spec.qa:
        raise ValueError(f"task {spec.name!r} has no {split!r} split; it has {sorted(spec.qa)}")
    qs = load_qa(spec.qa[split], split)
    if not qs:
        raise ValueError(f"{spec.qa[split]}: no questions for split {split!r}")
    if spec.prompt == "searchgym":
        return [Question(**{**q.__dict__, "prompt": ""}) for q in qs]
    cut = spec.config.max_question_chars
    return [q if q.prompt else Question(**{**q.__dict__, "prompt": EXTERNAL_PROMPT.format(question=q.question[:cut])})
            for q in qs]


def load_split(spec: TaskSpec, split: str) -> list[Question]:
    """Alias of :func:`task_questions` (older name)."""
    return task_questions(spec, split)


def register_task(name: str, qa: str | Path | dict, corpus_or_index: str | Path, reward: str = "em",
                  retriever: str = "bm25", config: EnvConfig | None = None, *, prompt: str = "dataset",
                  encoder: str | Path | None = None, query_prefix: str = "", passage_prefix: str = "",
                  data_sources: tuple[str, ...] | list[str] = (), persist: bool = True, **config_kwargs) -> str:
    """Register a user QA set + corpus (JSONL, indexed lazily) or index dir as ``searchgym/<name>``.

    ``qa`` is one file (used for every split) or ``{"train": path, "test": path, ...}``.
    ``prompt="dataset"`` keeps each row's own prompt; env settings default to
    :data:`EXTERNAL_ENV_DEFAULTS` (whole passages up to 2000 characters) under ``config`` /
    keyword fields. With ``persist`` (default) the record is written to
    ``$SEARCHGYM_HOME/tasks/<name>.yaml`` (replacing one of the same name), so every CLI
    command and fresh process sees the id. Returns the env id.
    """
    # only the fields ``config`` changes: the external defaults (whole passages) stay otherwise
    default = EnvConfig()
    base = {f.name: getattr(config, f.name) for f in fields(EnvConfig)
            if config is not None and getattr(config, f.name) != getattr(default, f.name)}
    env = {**base, "reward": reward, **config_kwargs}
    record = {"name": name, "qa": {str(k): str(v) for k, v in qa.items()} if isinstance(qa, dict) else str(qa),
              ("index" if Path(corpus_or_index).is_dir() else "corpus"): str(corpus_or_index),
              "retriever": retriever, "prompt": prompt, "env": env, "query_prefix": query_prefix,
              "passage_prefix": passage_prefix, "data_sources": list(data_sources)}
    if encoder is not None:
        record["encoder"] = str(encoder)
    spec = task_from_record(record, where=f"register_task({name!r})")
    if persist:
        save_task(spec, force=True)
        return spec.env_id
    return _register_gym(spec)


def _register_builtin() -> None:
    for name, fams in WORLD_TASKS.items():
        TASKS[name] = TaskSpec(name=name, families=fams, source="builtin")
        env_id = f"{NAMESPACE}/{name}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="searchgym.envs.registry:_make_env", kwargs={"task": name})


def make(env_id: str, **kwargs) -> gym.Env:
    """``gymnasium.make`` for searchgym ids (``"searchgym/MultiHop-v0"`` or ``"MultiHop-v0"``).
    An id not registered yet is looked up again in the stored tasks (added by another process)."""
    if "/" not in env_id:
        env_id = f"{NAMESPACE}/{env_id}"
    if env_id not in gym.registry:
        load_persistent_tasks()
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


def family_env_id(family: str) -> str:
    """The env id of a question family (:data:`FAMILY_ENV`); a ``searchgym/...`` id is
    returned as it is. ``ValueError`` naming the families otherwise."""
    if family.startswith(f"{NAMESPACE}/"):
        return family
    try:
        return FAMILY_ENV[family]
    except KeyError:
        raise ValueError(f"unknown question family {family!r}; choose from {sorted(k for k in FAMILY_ENV if k)}") \
            from None


def list_envs() -> list[str]:
    """The registered ``searchgym/...`` ids."""
    return sorted(k for k in gym.registry if k.startswith(NAMESPACE + "/"))


def env_for_data_source(data_source: str) -> str | None:
    """The env id serving rows whose ``data_source`` is ``data_source``: an env id or task
    name registered as such, else the user task listing it in ``data_sources``."""
    if not isinstance(data_source, str) or not data_source:
        return None
    for cand in (data_source, f"{NAMESPACE}/{data_source}"):
        if cand in gym.registry:
            return cand
    hits = [s.env_id for s in user_tasks() if data_source in s.data_sources]
    if len(hits) > 1:
        raise ValueError(f"data_source {data_source!r} is listed by several tasks: {hits}")
    return hits[0] if hits else None


def describe(env_id: str) -> dict:
    name = env_id.split("/", 1)[1]
    spec = TASKS.get(name)
    if spec is None:
        return {"id": env_id}
    if spec.families:
        return {"id": env_id, "kind": "world", "families": list(spec.families), "retriever": spec.retriever}
    return {"id": env_id, "kind": "user", "qa": spec.qa, "corpus_or_index": spec.corpus_or_index,
            "retriever": spec.retriever, "reward": spec.config.reward, "prompt": spec.prompt,
            "data_sources": list(spec.data_sources), "source": spec.source}


_register_builtin()
load_persistent_tasks()
