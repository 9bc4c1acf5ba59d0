"""Crash-safe file writes shared by every layer above retrieval.

Every file that is later read back is written through these helpers: write to a temp file
in the same directory, fsync, then ``os.replace``. A reader therefore sees either the old
file or the new one, never a torn one.

Temp names carry the writer's pid (``.<name>.<pid>-<random>.tmp``, ``.<name>.old.<pid>``),
so a later writer of the same target removes what a killed one left behind
(:func:`remove_dead_temps`). :func:`check_output` is the one rule every command that
replaces an ``--out`` applies first: a path that exists, is not empty and is not this
command's own output is refused (:class:`ForeignOutputError`) unless forced.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ForeignOutputError(FileExistsError):
    """An output path holds something the command did not write; it was left untouched."""


def _dir_is_empty(path: Path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def check_output(path: str | Path, is_own: Callable[[Path], bool], what: str, *, kind: str = "dir",
                 force: bool = False) -> None:
    """Refuse to replace ``path`` unless it is this command's own output.

    Allowed: ``path`` does not exist; (``kind="dir"``) an empty folder; or ``is_own(path)``
    is true (the command's marker, e.g. its manifest, is there). ``force`` allows anything
    of the right kind. Otherwise raises :class:`ForeignOutputError` with one line naming
    the path and the marker that was looked for (``what``); nothing is touched.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if kind == "dir":
        if path.is_dir() and not path.is_symlink():
            if force or _dir_is_empty(path) or is_own(path):
                return
            raise ForeignOutputError(f"{path}: not empty and not {what}; refusing to replace it "
                                     f"(pick another --out, or pass --force to replace it)")
        if force:
            return
        raise ForeignOutputError(f"{path}: exists and is not a folder; refusing to replace it "
                                 f"(pick another --out, or pass --force to replace it)")
    if path.is_dir():
        raise ForeignOutputError(f"{path}: is a folder, expected a file path; refusing to replace it")
    if force or path.stat().st_size == 0 or is_own(path):
        return
    raise ForeignOutputError(f"{path}: exists and is not {what}; refusing to overwrite it "
                             f"(pick another --out, or pass --force to overwrite it)")


def json_marker(path: Path, **expected: Any) -> bool:
    """True iff ``path`` is a JSON object file whose keys include ``expected`` (values equal;
    a value of ``...`` only needs the key)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(obj, dict) and all(k in obj and (v is ... or obj[k] == v) for k, v in expected.items())


def first_line_is(path: Path, line: str) -> bool:
    """True iff the text file ``path``'s first line is ``line`` (a generated file's marker)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n") == line
    except (OSError, UnicodeDecodeError):
        return False


def first_jsonl_record(path: Path) -> dict | None:
    """The first non-blank line of a JSONL file as a dict, or None (not JSONL / unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    return rec if isinstance(rec, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _temp_pid(name: str, target: str) -> int | None:
    """The writer pid of a temp name of ``target`` made by this module, else None."""
    head = f".{target}."
    if not name.startswith(head):
        return None
    rest = name[len(head):]
    if rest.startswith("old."):
        pid = rest[4:]
    elif rest.endswith(".tmp") and "-" in rest:
        pid = rest.split("-", 1)[0]
    else:
        return None
    return int(pid) if pid.isdigit() else None


def remove_temp(p: Path) -> None:
    """Delete a temp file or folder an atomic writer left (a symlink itself, never its target)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_dead_temps(path: str | Path) -> list[Path]:
    """Delete the temp files/folders of target ``path`` whose writer process is gone (a
    build killed by SIGKILL or a crash); temps of live writers are kept. Returns what was
    removed."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{path.name}.*"))
    except OSError:
        return removed
    for p in candidates:
        pid = _temp_pid(p.name, path.name)
        if pid is None or _pid_alive(pid):
            continue
        remove_temp(p)
        removed.append(p)
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path: str | Path, *, is_own: Callable[[Path], bool] | None = None, what: str = "",
               force: bool = False) -> Iterator[Path]:
    """Build a directory under a temp name; on success, swap it in place of ``path``.

    An existing ``path`` is replaced only after the new one is complete. With ``is_own``,
    :func:`check_output` runs first (before anything is created): a non-empty ``path`` that
    is not this writer's output raises :class:`ForeignOutputError` unless ``force``.
    Temps left by dead writers of ``path`` are removed first.
    """
    path = Path(path)
    if is_own is not None:
        check_output(path, is_own, what or "this command's output", force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line with a single write + fsync (no torn lines after a crash
    except possibly the last one, which ``read_jsonl`` skips)."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def iter_jsonl(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """Stream ``(line number, parsed value)`` from a JSONL file, skipping blank lines.

    A malformed line raises ``error`` naming ``file:line`` (every JSONL reader of the
    project reports bad input the same way).
    """
    path = Path(path)
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None


def read_jsonl(path: str | Path, skip_torn_tail: bool = True) -> list[dict]:
    """Read a JSONL file. A final line without its newline is a torn append (crash
    mid-write) and is dropped when ``skip_torn_tail``; any other malformed line raises
    ValueError naming file:line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i + 1}: not valid JSON ({exc.msg})") from None
    if torn.strip() and not skip_torn_tail:
        try:
            records.append(json.loads(torn))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{len(lines) + 1}: not valid JSON ({exc.msg})") from None
    return records
