"""The benchmark scripts' --quick (smoke) modes run end to end and report sane figures.

Each script runs as a subprocess exactly as ``run_all.py`` runs it; its last stdout line
must be ``RESULT_JSON {...}`` with the expected figures, all finite. The figures are not
timed here (this machine is shared); the invariants checked are the ones that hold on any
machine: exact FAISS flat is its own reference, token-in/token-out keeps every sampled
token's log-prob, phase shares add up to the step, the ON/OFF metric runs sample the same
episodes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

pytestmark = pytest.mark.slow  # four subprocess runs, ~10-25 s each on 2 shared cores


def run_quick(name: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick"], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT_JSON "), proc.stdout[-2000:]
    result = json.loads(last[len("RESULT_JSON "):])
    assert result["name"] == name
    figs = result["figures"]
    for k, v in figs.items():
        assert isinstance(v, (int, float)) and not isinstance(v, bool), (k, v)
        assert math.isfinite(v), (k, v)
    return figs


def test_index_build_quick():
    f = run_quick("index_build")
    assert f["docs"] == 400 and f["queries"] > 0
    for kind in ("flat", "hnsw", "ivfpq", "bm25"):
        for key in ("build_docs_per_s", "index_bytes_per_doc", "with_store_bytes_per_doc", "query_us"):
            assert f[f"{kind}_{key}"] > 0, (kind, key)
        assert 0.0 <= f[f"{kind}_subject_hit@3"] <= 1.0
        assert f[f"{kind}_with_store_bytes_per_doc"] > f[f"{kind}_index_bytes_per_doc"]
    assert f["flat_recall@10_vs_flat"] == 1.0 and f["flat_latency_vs_flat"] == 1.0
    for kind in ("hnsw", "ivfpq"):
        assert 0.0 <= f[f"{kind}_recall@10_vs_flat"] <= 1.0
    assert 0.0 <= f["bm25_agree@10_vs_flat"] <= 1.0
    # flat stores d float32 per document
    assert f["flat_index_bytes_per_doc"] == pytest.approx(4 * f["dimension"], rel=0.02)


def test_trainer_step_quick():
    f = run_quick("trainer_step")
    phases = ("rollout", "old_logprob", "reference", "advantages", "update", "metrics")
    for side in ("before", "after"):
        for clock in ("cpu", "wall"):
            total = sum(f[f"{side}_{p}_{clock}_s"] for p in phases)
            assert total == pytest.approx(f[f"{side}_step_{clock}_s"], abs=1e-6), (side, clock)
        assert f[f"{side}_reference_cpu_s"] > 0  # the quick config keeps the frozen reference
        assert 0 < f[f"{side}_update_peak_frac"] < 1
    assert f["before_old_logprob_cpu_s"] > 0 and f["after_old_logprob_cpu_s"] == 0  # engine log-probs reused
    assert f["token_identical_steps"] == f["steps_averaged"]  # same seed, same episodes on both paths
    assert f["after_logprob_absdiff"] < 1e-3 and f["matmul_peak_gflops"] > 0


def test_metrics_cost_quick():
    f = run_quick("metrics_cost")
    assert f["identical_steps"] == 2  # same seed: ON and OFF sample the same episodes
    assert f["step_s_on"] > 0 and f["step_s_off"] > 0
    assert 0 < f["hook_share_of_step"] < 1
    assert -1 < f["metrics_share_of_step"] < 1


def test_token_drift_quick():
    f = run_quick("token_drift")
    assert f["untrained_episodes"] == 16
    assert f["untrained_ours_lp_mismatch_episodes"] == 0
    assert f["untrained_ours_token_lp_maxdiff"] < 1e-4
    for k in ("reencode_drift_episode_frac", "reencode_token_mismatch_frac", "reencode_turn_len_change_frac",
              "roundtrip_drift_episode_frac", "roundtrip_token_mismatch_frac"):
        assert 0.0 <= f[f"untrained_{k}"] <= 1.0
    # an untrained byte-level BPE model samples token splits the encoder would merge
    assert f["untrained_reencode_drift_episode_frac"] > 0
    assert f["untrained_reencode_ep_lp_absdiff"] > f["untrained_ours_ep_lp_absdiff"]


def test_run_all_rejects_unknown_names(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--only", "no_such_bench", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "no_such_bench" in proc.stderr and "index_build" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_run_all_quick_writes_table(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--only", "metrics_cost",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "results-quick.json").read_text())
    (r,) = data["results"]
    assert r["name"] == "metrics_cost" and r["returncode"] == 0 and r["wall_s"] > 0
    assert "cpus" in data["machine"] and "git" in data["machine"]
    md = (tmp_path / "results-quick.md").read_text()
    assert "| metrics_cost | identical_steps | 2 |" in md
    assert not (tmp_path / "results.md").exists()
