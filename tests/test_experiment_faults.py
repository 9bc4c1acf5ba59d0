"""Faults in the main job: SIGKILL ``searchgym run`` inside a chosen stage, rerun, and
check that nothing torn is read and that the result equals an uninterrupted run.

Kill points are detected by watching what appears under the run folder (stage temp
folders, the index temp folder, an RL arm's ``metrics.jsonl``, the report's figures), not
by sleeping, so each kill lands in the stage it names; after each kill the test also
checks that the stage was indeed left unfinished.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from searchgym.run_folder import RunFolderBusy, remove_stale_temps, run_lock

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.005

#: report.json fields that are wall-clock measurements (or derived from them) and so differ
#: between two runs; every other number must be identical. Paths use "*" for list items.
TIMING_FIELDS = {
    "meta/name",  # the run folder's name (A vs B), not a number of the experiment
    "meta/wall_s",
    "meta/stage_times",  # per-stage wall_s / built_s / cached flags of this invocation
    "arms/*/wall_s",
    "table/*/wall_s",
    "table/*/metrics_share",  # metric-hook time / step time
    "run_time",  # the run's time from scratch, from the stages' build times
    "meta/machine/matmul_gflops_1thread",  # the machine's measured speed, varies run to run
}


def _is_timing_key(key: str) -> bool:
    """metrics.jsonl / eval.jsonl keys that are wall-clock times (time_rollout_s,
    step_time_s, metrics_time_s, eval_time_s, ...)."""
    return key.endswith("_s") or "time" in key


def _strip(obj, path: str = ""):
    """``obj`` without the TIMING_FIELDS, plus the list of removed paths."""
    removed = []

    def walk(o, p):
        if isinstance(o, dict):
            out = {}
            for k, v in o.items():
                kp = f"{p}/{k}" if p else str(k)
                if kp in TIMING_FIELDS:
                    removed.append(kp)
                    continue
                out[k] = walk(v, kp)
            return out
        if isinstance(o, list):
            return [walk(v, f"{p}/*") for v in o]
        return o

    return walk(obj, path), removed


def _leaf_keys(obj, p=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaf_keys(v, f"{p}/{k}" if p else str(k))
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaf_keys(v, f"{p}/*")
    else:
        yield p


# ----------------------------------------------------------------------------- processes


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid`` (Linux /proc)."""
    alive = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(d.name))
    return alive


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run and every worker it spawned; return once none of them is alive."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _group_members(proc.pid):
        assert time.monotonic() < deadline, f"processes of group {proc.pid} survived SIGKILL"
        time.sleep(0.01)


def _run(cmd: list[str], log: Path, until=None, timeout: float = 400.0) -> tuple[str, float]:
    """Run ``cmd`` in its own session. With ``until`` (a predicate), SIGKILL its group as
    soon as ``until()`` is true and return ("killed", seconds); a run that finishes first
    fails the test (the kill point was missed). Without it, wait for exit 0."""
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while True:
                if until is not None and until():
                    _kill_group(proc)
                    return "killed", time.perf_counter() - t0
                rc = proc.poll()
                if rc is not None:
                    tail = log.read_text(errors="replace")[-3000:]
                    if until is not None:
                        pytest.fail(f"run exited ({rc}) before the kill point was reached:\n{tail}")
                    assert rc == 0, f"run failed ({rc}):\n{tail}"
                    return "done", time.perf_counter() - t0
                if time.perf_counter() - t0 > timeout:
                    _kill_group(proc)
                    pytest.fail(f"run did not finish in {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:
                _kill_group(proc)


# ----------------------------------------------------------------------------- file checks


def _temp_component(path: Path, root: Path) -> bool:
    return any(part.startswith(".") and (part.endswith(".tmp") or ".old." in part)
               for part in path.relative_to(root).parts)


def assert_no_torn_files(root: Path) -> None:
    """Every .json under ``root`` parses; every .jsonl ends with a newline and every line
    parses; no temp file/folder of fileio's atomic writers is left over."""
    leftovers = [p for p in root.rglob("*") if _temp_component(p, root)]
    assert not leftovers, f"temp files left behind: {leftovers[:5]}"
    checked = 0
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        if p.suffix == ".json":
            try:
                json.loads(p.read_text(encoding="utf-8"))
            except ValueError as exc:
                pytest.fail(f"torn JSON file {p}: {exc}")
            checked += 1
        elif p.suffix == ".jsonl":
            text = p.read_text(encoding="utf-8")
            assert text == "" or text.endswith("\n"), f"{p}: torn last line"
            for i, line in enumerate(text.splitlines(), 1):
                try:
                    json.loads(line)
                except ValueError as exc:
                    pytest.fail(f"torn JSONL line {p}:{i}: {exc}")
            checked += 1
    assert checked > 20, f"only {checked} json/jsonl files under {root}"


def _done(run: Path, stage_glob: str) -> list[Path]:
    return sorted(run.glob(f"cache/{stage_glob}/manifest.json"))


def _any(run: Path, pattern: str) -> bool:
    return next(iter(run.glob(pattern)), None) is not None


def _rl_at_step(run: Path, step: int) -> bool:
    """Some RL arm's scratch metrics.jsonl (the live, resumable log) holds a ``step``
    record, written after its first checkpoint (save_every=2 in the smoke preset)."""
    for m in run.glob("cache/.scratch/arm-*/rl/metrics.jsonl"):
        try:
            lines = m.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                if json.loads(line).get("step") == step:
                    return True
            except ValueError:
                pass  # a line being appended right now
    return False


def _arm_records(run: Path) -> dict[str, dict[str, list[dict]]]:
    out = {}
    for d in sorted((run / "arms").iterdir()):
        recs = {}
        for name in ("metrics.jsonl", "eval.jsonl"):
            lines = (d / name).read_text(encoding="utf-8").splitlines()
            recs[name] = [{k: v for k, v in json.loads(x).items() if not _is_timing_key(k)} for x in lines]
        out[d.name] = recs
    return out


def _stage_bytes(run: Path) -> dict[str, bytes]:
    """Result files of the cached stages that must be bitwise equal across runs: model
    weights, the FAISS index, the world's and the demos' data."""
    out = {}
    cache = run / "cache"
    for p in sorted(cache.rglob("*")):
        rel = p.relative_to(cache).as_posix()
        if not p.is_file() or rel.startswith("."):
            continue
        keep = (p.suffix in (".safetensors", ".faiss")
                or (rel.startswith(("world-", "demos-")) and p.suffix == ".jsonl")
                or p.name == "kg.json")
        if keep:
            out[rel] = p.read_bytes()
    return out


# ----------------------------------------------------------------------------- tests


#: The smoke preset restricted to one warm start (its 2 arms, grpo and clip_cov, still run in
#: 2 spawned worker processes): the full smoke preset took 243 s uninterrupted plus 404 s for
#: the killed-and-resumed copy on the shared 2-core machine at load 6-8, over this test's budget.
SMOKE = [sys.executable, "-m", "searchgym", "run", "--preset", "smoke", "--warm-starts", "diverse",
         "--no-progress", "--out"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill_in_every_stage_then_resume_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    log = tmp_path / "runs.log"
    times: dict[str, float] = {}

    _, times["A uninterrupted"] = _run(SMOKE + [str(a)], log)

    # 1. inside the world stage, while the dense index is being built
    _, times["B kill 1 (index)"] = _run(
        SMOKE + [str(b)], log, until=lambda: _any(b, "cache/.world-*.tmp/world/.index-dense.*.tmp"))
    assert not _done(b, "world-*"), "world stage marked done although killed while indexing"
    assert _any(b, "cache/.world-*.tmp"), "the killed stage's temp folder should be what is left"

    # 2. inside SFT (its log is being written in the stage's temp folder)
    _, times["B kill 2 (sft)"] = _run(SMOKE + [str(b)], log, until=lambda: _any(b, "cache/.sft-*.tmp/sft_log.jsonl"))
    assert _done(b, "world-*") and _done(b, "model-*") and _done(b, "demos-*")
    assert not _done(b, "sft-*"), "the SFT stage marked done although killed inside it"

    # 3. inside RL: after an arm's step-2 checkpoint and its step-3 metrics line, so the
    # rerun resumes from the checkpoint and must drop the step-3 line it logged before
    _, times["B kill 3 (rl)"] = _run(SMOKE + [str(b)], log, until=lambda: _rl_at_step(b, 3))
    assert len(_done(b, "sft-*")) == 1
    assert len(_done(b, "arm-*")) < 2
    from searchgym.training.checkpoint import latest_checkpoint

    ckpts = {d.name: int(latest_checkpoint(d / "rl").name[5:]) for d in b.glob("cache/.scratch/arm-*")
             if latest_checkpoint(d / "rl") is not None}
    assert ckpts, "no RL checkpoint to resume from"
    assert not (b / "arms").exists()

    # 4. inside the report: the first figure is written, report.json is not yet. A report
    # left by an earlier run must not survive next to the new arms/ (it would be stale).
    (b / "report.json").write_text('{"stale": true}\n')
    _, times["B kill 4 (report)"] = _run(SMOKE + [str(b)], log, until=lambda: _any(b, "figures/*.png"))
    assert len(_done(b, "arm-*")) == 2
    assert (b / "arms").is_dir() and not (b / "report.json").exists()
    # the checkpointed arms resumed (not restarted) and dropped their scratch
    assert not any(b.glob("cache/.scratch/arm-*/rl"))
    for name, step in ckpts.items():
        (manifest,) = _done(b, name)
        assert json.loads(manifest.read_text())["info"]["resumed_from_step"] == step, name

    # 5. let it finish
    _, times["B final rerun"] = _run(SMOKE + [str(b)], log)
    print("\nfault-injection timings (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in times.items()))

    timings_b = json.loads((b / "timings.json").read_text())
    assert all(s["cached"] for n, s in timings_b["stages"].items() if n != "arms")

    # every number of the report equals the uninterrupted run's, timings excluded
    rep_a, rm_a = _strip(json.loads((a / "report.json").read_text()))
    rep_b, rm_b = _strip(json.loads((b / "report.json").read_text()))
    assert set(rm_a) == set(rm_b) == TIMING_FIELDS  # each listed field exists (no stale list)
    # no other timing-like field slipped into the report unnoticed
    unlisted = {k for k in _leaf_keys(rep_a) if _is_timing_key(k.rsplit("/", 1)[-1])}
    assert not unlisted, f"timing-like report fields not in TIMING_FIELDS: {unlisted}"
    assert rep_a == rep_b
    # per-step and eval records too (no duplicated/missing step after the resume)
    recs_a, recs_b = _arm_records(a), _arm_records(b)
    assert recs_a == recs_b
    for arm, recs in recs_b.items():
        assert [r["step"] for r in recs["metrics.jsonl"]] == [1, 2, 3, 4], arm
        assert [(r["step"], r["replica"]) for r in recs["eval.jsonl"]] == [(0, "A"), (0, "B"), (4, "A")], arm
    # and the stage outputs: weights of every model (RL arms included), index, data
    bytes_a, bytes_b = _stage_bytes(a), _stage_bytes(b)
    assert len(bytes_a) >= 12 and bytes_a.keys() == bytes_b.keys()
    differ = [k for k in bytes_a if bytes_a[k] != bytes_b[k]]
    assert not differ, f"stage outputs differ after kill + resume: {differ}"

    assert_no_torn_files(a)
    assert_no_torn_files(b)


_WORLD_ONLY = """
import sys
from pathlib import Path
from searchgym.cache import StageCache
from searchgym.experiment import _world_stage
from searchgym.run_folder import remove_stale_temps, run_lock
from searchgym.presets import get_preset

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
p = get_preset("smoke")
with run_lock(out):  # what run_experiment does before its first stage
    remove_stale_temps(out)
    r = StageCache(out / "cache").run("world", (p.world, p.index), {}, _world_stage(p))
print(r.path, r.cached)
"""


def test_kill_while_indexing_leaves_no_done_stage_and_rerun_rebuilds(tmp_path):
    """Fast variant: kill the world stage of the smoke preset while its FAISS index is being
    built, rerun it, and check the rebuilt stage (world data and a working index)."""
    import torch

    torch.set_num_threads(1)
    run = tmp_path / "run"
    log = tmp_path / "log"
    cmd = [sys.executable, "-c", _WORLD_ONLY, str(run)]
    how, _ = _run(cmd, log, until=lambda: _any(run, "cache/.world-*.tmp/world/.index-dense.*.tmp"), timeout=300)
    assert how == "killed"
    assert not _done(run, "world-*")
    stale = list(run.glob("cache/.world-*.tmp"))
    assert stale, "a killed stage leaves only its temp folder"

    _run(cmd, log, timeout=300)
    (stage,) = _done(run, "world-*")
    assert not any(p.exists() for p in stale), "stale temp folder not cleaned"
    assert_no_torn_files_small(run)

    # the rebuilt world equals a fresh generation, and its index covers every document
    import faiss

    from searchgym.envs.world import generate_world
    from searchgym.presets import get_preset
    from searchgym.retrieval.index import read_manifest

    world = generate_world(get_preset("smoke").world)
    wdir = stage.parent / "world"
    corpus = [json.loads(x) for x in (wdir / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [d["id"] for d in corpus] == [d.doc_id for d in world.documents] and corpus
    read_manifest(wdir / "index-dense")  # raises on a missing/foreign manifest
    assert faiss.read_index(str(wdir / "index-dense" / "index.faiss")).ntotal == len(corpus)


def assert_no_torn_files_small(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if _temp_component(p, root)]
    assert not leftovers, leftovers
    for p in root.rglob("*.json"):
        json.loads(p.read_text(encoding="utf-8"))
    for p in root.rglob("*.jsonl"):
        text = p.read_text(encoding="utf-8")
        assert text.endswith("\n")
        for line in text.splitlines():
            json.loads(line)


def test_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    from searchgym.cli import main

    out = tmp_path / "run"
    out.mkdir()
    with run_lock(out) as locked:
        assert locked
        with pytest.raises(RunFolderBusy, match="another `searchgym run`"):
            with run_lock(out):
                pass
        # the CLI turns it into a one-line error, before any stage runs
        assert main(["run", "--preset", "smoke", "--out", str(out), "--no-progress"]) != 0
        assert "another `searchgym run`" in capsys.readouterr().err
        assert not (out / "cache").exists()
    with run_lock(out) as locked:  # released with its holder
        assert locked


def test_remove_stale_temps_only_touches_atomic_writer_temps(tmp_path):
    out = tmp_path
    (out / "cache" / ".world-abc.x1y2.tmp" / "world").mkdir(parents=True)
    (out / "cache" / ".scratch" / "arm-a").mkdir(parents=True)
    (out / "cache" / "world-abc").mkdir()
    (out / ".arms.old.123").mkdir()
    (out / "figures").mkdir()
    (out / "figures" / ".a.png.q.tmp").write_bytes(b"x")
    (out / "figures" / "a.png").write_bytes(b"x")
    (out / ".report.json.zz.tmp").write_text("{")
    (out / "report.json").write_text("{}")
    removed = {p.relative_to(out).as_posix() for p in remove_stale_temps(out)}
    assert removed == {"cache/.world-abc.x1y2.tmp", ".arms.old.123", "figures/.a.png.q.tmp", ".report.json.zz.tmp"}
    assert (out / "cache" / ".scratch" / "arm-a").is_dir() and (out / "cache" / "world-abc").is_dir()
    assert (out / "figures" / "a.png").exists() and (out / "report.json").exists()


def _tiny_arm(spec, config, out: Path, inputs: dict, scratch: Path) -> dict:
    if spec.objective == "broken":
        raise RuntimeError("exploded")
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "seed": spec.seed}) + "\n")
    return {"seed": spec.seed}


def test_finished_arms_are_read_without_starting_workers(tmp_path, monkeypatch):
    """A rerun whose arms are all cached (the common case after a kill in the report) must
    not pay for spawning a worker pool; a single unfinished arm runs in-process."""
    import concurrent.futures

    from searchgym.arms import ArmSpec
    from searchgym.pool import ArmTask, run_arms

    specs = [ArmSpec("diverse", "grpo", 0), ArmSpec("diverse", "clip_cov", 0)]
    tasks = [ArmTask(s, str(tmp_path), {"steps": 1}, {}, _tiny_arm) for s in specs]
    first = run_arms(tasks, workers=1, progress=False)
    assert [o.status for o in first] == ["ok", "ok"] and not any(o.cached for o in first)

    def no_pool(*a, **k):
        raise AssertionError("a worker pool was started for finished arms")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    broken = ArmTask(ArmSpec("narrow", "broken", 0), str(tmp_path), {"steps": 1}, {}, _tiny_arm)
    again = run_arms(tasks + [broken], workers=2, progress=False)
    assert [(o.status, o.cached) for o in again] == [("ok", True), ("ok", True), ("failed", False)]
    assert [o.path for o in again[:2]] == [o.path for o in first]
    assert "exploded" in again[2].error
