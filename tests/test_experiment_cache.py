"""Stage cache: keys follow content, finished stages are reused, failures leave nothing behind."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from searchgym.arms import ArmSpec
from searchgym.cache import StageCache, stage_key
from searchgym.pool import ArmTask, run_arms


@dataclass(frozen=True)
class Cfg:
    n: int = 3
    lr: float = 1e-3
    names: tuple[str, ...] = ("a", "b")


def test_key_follows_config_and_inputs():
    base = stage_key("world", Cfg())
    assert base == stage_key("world", Cfg())  # same config -> same key
    assert len({base, stage_key("world", Cfg(n=4)), stage_key("world", Cfg(lr=1e-4)),
                stage_key("world", Cfg(names=("a",))), stage_key("index", Cfg()),
                stage_key("world", Cfg(), version=2), stage_key("world", Cfg(), {"up": "k1"})}) == 7
    assert stage_key("world", Cfg(), {"up": "k1"}) != stage_key("world", Cfg(), {"up": "k2"})
    # dict order does not matter; int vs float does
    assert stage_key("s", {"a": 1, "b": 2}) == stage_key("s", {"b": 2, "a": 1})
    assert stage_key("s", {"a": 1}) != stage_key("s", {"a": 1.0})
    with pytest.raises(TypeError, match="cannot hash"):
        stage_key("s", {"a": object()})


def _write_n(cfg: Cfg, calls: list):
    def fn(out: Path, inputs: dict, scratch: Path) -> dict:
        calls.append(cfg.n)
        (out / "data.txt").write_text("x" * cfg.n)
        return {"n": cfg.n}
    return fn


def test_cache_reuse_and_downstream_invalidation(tmp_path):
    cache = StageCache(tmp_path)
    calls: list = []
    a = cache.run("a", Cfg(), {}, _write_n(Cfg(), calls))
    assert not a.cached and (a.path / "data.txt").read_text() == "xxx"
    assert json.loads((a.path / "manifest.json").read_text())["info"] == {"n": 3}
    b = cache.run("b", Cfg(n=1), {"a": a}, lambda out, inp, s: {"up": (inp["a"] / "data.txt").read_text()})
    assert b.info == {"up": "xxx"}
    # rerun: both cached, function not called
    a2 = cache.run("a", Cfg(), {}, _write_n(Cfg(), calls))
    assert a2.cached and a2.key == a.key and calls == [3]
    # upstream config change -> new upstream key -> downstream rebuilt under a new key
    a3 = cache.run("a", Cfg(n=5), {}, _write_n(Cfg(n=5), calls))
    b3 = cache.run("b", Cfg(n=1), {"a": a3}, lambda out, inp, s: {"up": (inp["a"] / "data.txt").read_text()})
    assert not b3.cached and b3.key != b.key and b3.info == {"up": "xxxxx"}


def test_interrupted_stage_leaves_no_done_marker_and_keeps_scratch(tmp_path):
    cache = StageCache(tmp_path)

    def crash(out: Path, inputs: dict, scratch: Path):
        (scratch / "checkpoint").write_text("step 7")
        (out / "half").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run("rl", Cfg(), {}, crash)
    key = stage_key("rl", Cfg())
    assert not cache.path("rl", key).exists()
    assert (cache.scratch("rl", key) / "checkpoint").read_text() == "step 7"

    def resume(out: Path, inputs: dict, scratch: Path):
        return {"resumed_from": (scratch / "checkpoint").read_text()}

    res = cache.run("rl", Cfg(), {}, resume)
    assert res.info == {"resumed_from": "step 7"} and not cache.scratch("rl", key).exists()


def arm_fn(spec: ArmSpec, config: Cfg, out: Path, inputs: dict, scratch: Path) -> dict:
    """Module-level so spawn workers can import it."""
    if spec.objective == "broken":
        raise RuntimeError(f"objective {spec.objective} exploded")
    import torch

    (out / "threads.txt").write_text(str(torch.get_num_threads()))
    return {"seed": spec.seed}


@pytest.mark.parametrize("workers", [1, 2])
def test_failing_arm_is_not_fatal(tmp_path, workers):
    specs = [ArmSpec("diverse", "grpo", 0), ArmSpec("diverse", "broken", 0), ArmSpec("narrow", "grpo", 1)]
    tasks = [ArmTask(s, str(tmp_path), Cfg(), {}, arm_fn) for s in specs]
    out = run_arms(tasks, workers=workers, threads_per_worker=1, progress=False)
    assert [o.status for o in out] == ["ok", "failed", "ok"]
    assert "objective broken exploded" in out[1].error
    assert (Path(out[0].path) / "threads.txt").read_text() == "1"
    again = run_arms(tasks, workers=1, progress=False)
    assert again[0].cached and again[2].cached and again[1].status == "failed"


def test_code_fingerprint_follows_code_not_comments(tmp_path):
    from searchgym.cache import _code_of, _searchgym_imports, code_fingerprint

    src = '"""Doc."""\nimport os\n\n\ndef f(x):\n    """Doc of f."""\n    # why\n    return x + 1\n'
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text(src)
    b.write_text(src.replace("# why", "# a new measurement: 3.2x").replace("Doc of f.", "Another doc."))
    c.write_text(src.replace("x + 1", "x + 2"))
    assert _code_of(a) == _code_of(b)  # comments and docstrings are not code
    assert _code_of(a) != _code_of(c)
    # every searchgym import counts, function-local and relative ones too
    d = tmp_path / "d.py"
    d.write_text("import numpy\nfrom . import rank\n\ndef g():\n    from searchgym.training.sft import train_sft\n")
    found = _searchgym_imports(d, "searchgym.metrics.summary")
    assert {"searchgym.metrics.rank", "searchgym.training.sft"} <= found and "numpy" not in found
    # a stage's fingerprint covers what its root imports: SFT code is in the SFT stage's, not the world's
    assert code_fingerprint("searchgym.training.sft") != code_fingerprint("searchgym.envs.world")


def test_a_function_root_covers_that_stage_function_only(tmp_path, monkeypatch):
    """A "module:function" root fingerprints that function's code, not its neighbours'
    (the world, model and demos stage wrappers share searchgym/experiment.py)."""
    from searchgym.cache import code_fingerprint

    monkeypatch.syspath_prepend(str(tmp_path))
    mod = tmp_path / "fp_probe_stages.py"
    src = 'def world(x):\n    """Doc."""\n    return x + 1\n\n\ndef demos(x):\n    return x * 2\n'

    def fingerprints(text: str) -> tuple[str, str]:
        mod.write_text(text)
        code_fingerprint.cache_clear()
        return code_fingerprint("fp_probe_stages:world"), code_fingerprint("fp_probe_stages:demos")

    world, demos = fingerprints(src)
    assert world != demos
    edited = fingerprints(src.replace("x * 2", "x * 3"))
    assert edited[0] == world and edited[1] != demos  # editing demos leaves world's fingerprint
    assert fingerprints(src.replace("Doc.", "Another doc."))[0] == world  # a docstring is not code
    assert fingerprints(src.replace("x + 1", "x - 1"))[0] != world
    with pytest.raises(ValueError, match="no function 'sft'"):
        code_fingerprint("fp_probe_stages:sft")
    code_fingerprint.cache_clear()


# ----------------------------------------------------------------------------- dispatch order

FULL_ARMS = Path(__file__).resolve().parents[1] / "docs" / "results" / "full" / "arms"


def _makespan(durations: list[float], workers: int = 2) -> float:
    """When the last of ``durations`` ends, each task going to the first free worker in order
    (how ProcessPoolExecutor hands out submitted tasks)."""
    free = [0.0] * workers
    for d in durations:
        free[free.index(min(free))] += d
    return max(free)


def test_dispatch_order_keeps_seeds_whole_and_puts_expected_long_arms_first():
    from searchgym.experiment import dispatch_order

    specs = [ArmSpec(ws, o, s) for s in (3, 1) for ws in ("diverse", "narrow") for o in ("grpo", "kl_cov", "clip_cov")]
    searches = {("diverse", 3): 1.7, ("narrow", 3): 2.2, ("diverse", 1): 1.8, ("narrow", 1): 1.8}
    order = dispatch_order(specs, searches)
    assert sorted(order, key=specs.index) == specs  # a permutation
    assert [sp.seed for sp in order] == [3] * 6 + [1] * 6  # seed-major, the seeds' own order
    assert [sp.arm_id for sp in order[:6]] == ["narrow-kl_cov-s3", "narrow-clip_cov-s3", "narrow-grpo-s3",
                                               "diverse-kl_cov-s3", "diverse-clip_cov-s3", "diverse-grpo-s3"]
    # equal searches: the warm starts keep their order; plain GRPO (no gradient diagnostic) last
    assert [sp.arm_id for sp in order[6:]] == ["diverse-kl_cov-s1", "diverse-clip_cov-s1", "narrow-kl_cov-s1",
                                               "narrow-clip_cov-s1", "diverse-grpo-s1", "narrow-grpo-s1"]
    assert dispatch_order(specs, {}) == sorted(specs, key=lambda sp: (sp.seed != 3, sp.objective == "grpo"))


@pytest.mark.skipif(not FULL_ARMS.is_dir(), reason="no committed full report")
def test_dispatch_order_shortens_the_committed_full_parts_on_two_workers():
    """On the committed full report's measured arm times and RL-start searches, each part's
    arms (whole seeds, as they ran) end sooner in dispatch order than in report order."""
    from searchgym.experiment import dispatch_order

    wall, searches = {}, {}
    for d in sorted(FULL_ARMS.iterdir()):
        arm = json.loads((d / "arm.json").read_text())
        spec = ArmSpec(arm["warm_start"], arm["objective"], arm["seed"])
        wall[spec] = arm["wall_s"]
        start = [json.loads(line) for line in (d / "eval.jsonl").read_text().splitlines()]
        start = [r["eval/searches_mean"] for r in start if r.get("step") == 0]
        searches[(spec.warm_start, spec.seed)] = sum(start) / len(start)
    objectives = list(dict.fromkeys(sp.objective for sp in sorted(wall, key=lambda sp: sp.objective != "grpo")))
    saved = 0.0
    for part in ((0, 1), (2, 3, 4)):
        specs = [ArmSpec(ws, o, s) for s in part for ws in ("diverse", "narrow") for o in objectives]
        before = _makespan([wall[sp] for sp in specs])
        after = _makespan([wall[sp] for sp in dispatch_order(specs, searches)])
        assert after <= before
        saved += before - after
    assert saved > 100.0  # measured: 5,138 -> 5,124 s and 6,713 -> 6,572 s
