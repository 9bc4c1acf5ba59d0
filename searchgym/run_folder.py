"""A run folder's lock and its stale-temp cleanup.

Two runs writing into one folder would race on the same stage temp folders and
checkpoints, so ``searchgym run`` (and the sweeps, which build the same stages) hold an
exclusive lock on ``<out>/.lock`` (:mod:`filelock`, an OS lock: released when the process
dies, even by SIGKILL; the file stays, and marks the folder as a run folder). While it is
held no other writer is alive, so the temp files an interrupted run left can be deleted.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import filelock

from searchgym.retrieval.fileio import remove_temp

__all__ = ["LOCK_FILE", "RunFolderBusy", "run_lock", "remove_stale_temps"]

LOCK_FILE = ".lock"


class RunFolderBusy(OSError):
    """Another process holds the run folder's lock."""


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[bool]:
    """Hold the exclusive lock on run folder ``out`` (``out/.lock``) for the block; yields
    True. A folder another process holds raises :class:`RunFolderBusy` at once, in one line
    naming the lock file. ``preserve_lock_file``: the lock file is kept on release, and no
    soft (marker-file) fallback is used, whose marker a killed run would leave behind."""
    lock = filelock.FileLock(Path(out) / LOCK_FILE, timeout=0, preserve_lock_file=True)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunFolderBusy(f"{out}: another `searchgym run` is writing into this folder "
                            f"(it holds {Path(out) / LOCK_FILE}); wait for it or pick another --out") from None
    try:
        yield True
    finally:
        lock.release()


def _is_temp(name: str) -> bool:
    # names made by fileio.atomic_path / atomic_dir: ".<name>.<random>.tmp" and ".<name>.old.<pid>"
    return name.startswith(".") and (name.endswith(".tmp") or ".old." in name)


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete the temp files/folders an interrupted run left in ``out``, ``out/figures``
    and ``out/cache`` (call only while holding :func:`run_lock`: then none is in use).
    They are never read as results (readers skip dot-names), but they hold disk."""
    removed = []
    for base in (out, out / "figures", out / "cache"):
        if not base.is_dir():
            continue
        for p in base.iterdir():
            if _is_temp(p.name):
                remove_temp(p)
                removed.append(p)
    return removed
