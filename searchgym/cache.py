"""The experiment's stage cache: content-addressed stage outputs and the code fingerprints
that key them.

A stage's key is the SHA-256 of its name, its code version and code fingerprint, its config
(a dataclass or dict, serialised canonically) and the keys of the stages it reads. Its
outputs live in ``<root>/<stage>-<key>/``, built under a temporary name with
:func:`searchgym.retrieval.fileio.atomic_dir` and written last with a ``manifest.json`` (the
``done`` marker). A rerun finds the manifest and skips the stage; an interrupted run leaves
no half-written stage behind, so it resumes at the first unfinished stage (and inside a long
stage, through its ``scratch`` folder, which survives an interruption).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.util
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import searchgym
from searchgym.retrieval.fileio import atomic_dir, atomic_write_json

MANIFEST = "manifest.json"


class StageConfig(dict):
    """A stage's config dict, hashed without its run-time-only keys (the thread count and
    the progress flag do not change a stage's result, so they stay out of its key)."""

    RUNTIME_KEYS = ("threads", "progress")


def _canonical(obj: Any) -> Any:
    """A JSON-ready, order-independent form of a config (dataclasses, tuples, paths...)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__,
                **{f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, StageConfig):
        obj = {k: v for k, v in obj.items() if k not in StageConfig.RUNTIME_KEYS}
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj)  # exact, and distinguishes 1.0 from 1
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise TypeError(f"cannot hash config value of type {type(obj).__name__}: {obj!r}")


# ----------------------------------------------------------------------------- code fingerprints


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def _searchgym_imports(path: Path, module: str) -> set[str]:
    """The ``searchgym.*`` modules ``path`` imports anywhere (function-local imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m == "searchgym" or m.startswith("searchgym.")}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _code_of(path: Path) -> bytes:
    """A module's code without its comments and docstrings (the AST dump, which drops
    comments, with every docstring removed): a comment citing a new measurement is not a
    code change and must not rebuild a 10-minute stage."""
    tree = _strip_docstrings(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return ast.dump(tree, include_attributes=False).encode()


def _function_code_of(path: Path, name: str) -> bytes:
    """The code (as :func:`_code_of`) of the module-level function ``name`` of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return ast.dump(_strip_docstrings(node), include_attributes=False).encode()
    raise ValueError(f"code_fingerprint: {path} has no function {name!r}")


@functools.lru_cache(maxsize=None)
def code_fingerprint(*roots: str) -> str:
    """SHA-256 of the package version and the code (:func:`_code_of`: comments and
    docstrings excluded) of every ``searchgym`` module the ``roots`` import, transitively
    (function-local imports included, so the set is a safe over-approximation). A stage
    keyed with it is rebuilt whenever its code changes.

    A root ``"module:function"`` adds only that function's own code (a stage wrapper that
    lives beside unrelated stages); name the modules it calls as roots of their own."""
    seen: dict[str, Path] = {}
    functions: dict[str, bytes] = {}
    todo = []
    for root in roots:
        mod, _, func = root.partition(":")
        if func:
            path = _module_file(mod)
            if path is None:
                raise ValueError(f"code_fingerprint: no module {mod!r} (root {root!r})")
            functions[root] = _function_code_of(path, func)
        else:
            todo.append(mod)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = _module_file(mod)
        if path is None:
            continue
        seen[mod] = path
        parents = {mod.rsplit(".", i)[0] for i in range(1, mod.count(".") + 1)}  # their __init__ runs too
        todo.extend((_searchgym_imports(path, mod) | parents) - set(seen))
    h = hashlib.sha256(f"searchgym {searchgym.__version__}\n".encode())
    for mod in sorted(seen):
        h.update(f"{mod}\n".encode())
        h.update(_code_of(seen[mod]))
    for root in sorted(functions):
        h.update(f"{root}\n".encode())
        h.update(functions[root])
    return h.hexdigest()[:16]


def stage_key(name: str, config: Any, inputs: Mapping[str, str] | None = None, version: int = 1,
              code: str = "") -> str:
    """Content hash of a stage: name, code version and fingerprint, config and the keys of
    its inputs."""
    payload = {"stage": name, "version": version, "config": _canonical(config),
               "inputs": {k: inputs[k] for k in sorted(inputs or {})}}
    if code:
        payload["code"] = code
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class StageResult:
    """A finished stage: where its outputs are and whether this run computed them."""

    name: str
    key: str
    path: Path
    cached: bool
    wall_s: float  # time this run spent (0-ish when cached)
    built_s: float  # time the stage took when it was built
    info: dict = field(default_factory=dict)  # what the stage function returned


StageFn = Callable[[Path, dict[str, Path], Path], "dict | None"]


class StageCache:
    """Content-addressed stage outputs under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def scratch(self, name: str, key: str) -> Path:
        return self.root / ".scratch" / f"{name}-{key}"

    def lookup(self, name: str, key: str) -> dict | None:
        """The manifest of a finished stage, or None."""
        m = self.path(name, key) / MANIFEST
        if not m.exists():
            return None
        try:
            manifest = json.loads(m.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None  # a corrupt manifest means "not done": rebuild
        return manifest if manifest.get("key") == key else None

    def run(self, name: str, config: Any, inputs: Mapping[str, StageResult], fn: StageFn,
            version: int = 1, code: str = "") -> StageResult:
        """Return the cached stage or build it with ``fn(out_dir, input_paths, scratch)``.

        ``fn`` writes its outputs into ``out_dir`` (a temp folder renamed into place on
        success) and may keep resumable state in ``scratch`` (kept across interruptions,
        deleted on success). Its returned dict is stored in the manifest as ``info``.
        """
        key = stage_key(name, config, {k: r.key for k, r in inputs.items()}, version, code)
        t0 = time.perf_counter()
        manifest = self.lookup(name, key)
        if manifest is not None:
            # a run killed between publishing the stage and deleting its scratch left it behind
            shutil.rmtree(self.scratch(name, key), ignore_errors=True)
            return StageResult(name, key, self.path(name, key), True, time.perf_counter() - t0,
                               float(manifest.get("wall_s", 0.0)), manifest.get("info") or {})
        scratch = self.scratch(name, key)
        scratch.mkdir(parents=True, exist_ok=True)
        with atomic_dir(self.path(name, key)) as tmp:
            info = fn(tmp, {k: r.path for k, r in inputs.items()}, scratch) or {}
            wall = time.perf_counter() - t0
            atomic_write_json(tmp / MANIFEST, {
                "stage": name, "key": key, "version": version, "code": code, "config": _canonical(config),
                "inputs": {k: r.key for k, r in inputs.items()}, "wall_s": wall, "info": info,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            })
        shutil.rmtree(scratch, ignore_errors=True)
        return StageResult(name, key, self.path(name, key), False, wall, wall, info)
