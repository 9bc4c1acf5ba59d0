"""Oracle check with the default dense retriever (MiniLM) on the smoke world: every valid
strategy, executed literally, reaches the answer and is recognised as itself."""

import os

import pytest

from searchgym.envs import world as W
from searchgym.envs.env import EnvConfig, SearchEnv
from searchgym.envs.signature import match_strategy
from searchgym.envs.strategies import oracle_table, run_oracle

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow

BAR = 0.95  # the bar, per family x strategy


@pytest.fixture(scope="module")
def smoke(smoke_world):
    """conftest's session smoke world, with its dense index."""
    import torch

    torch.set_num_threads(1)
    W.ensure_index(smoke_world, "dense")
    return smoke_world


@pytest.fixture(scope="module")
def env(smoke):
    from searchgym.retrieval import load_retriever

    qs = [q for s in ("train", "validation", "test") for q in W.load_questions(smoke, s)]
    return SearchEnv(qs, load_retriever(W.ensure_index(smoke, "dense")), EnvConfig())


@pytest.fixture(scope="module")
def runs(env):
    results = []
    table = oracle_table(env, results=results)
    return table, results


def test_every_strategy_meets_the_bar(runs):
    table, _ = runs
    expected = {"single_hop": {"direct", "direct_confirm", "reverse"},
                "multi_hop": {"forward", "combined", "forward_confirm"},
                "comparison": {"a_first", "b_first"}, "multi_answer": {"forward", "forward_confirm"}}
    assert {f: set(s) for f, s in table.items()} == expected
    for fam, strats in table.items():
        for s, v in strats.items():
            assert v["n"] >= 10, (fam, s, v)
            assert v["correct"] >= BAR and v["matched"] >= BAR and v["both"] >= BAR, (fam, s, v)


def test_each_trajectory_signature_maps_to_its_strategy(env, runs):
    _, results = runs
    by_id = {q.qid: q for q in env.questions}
    ok = 0
    for r in results:
        # the env's label is match_strategy of the ground-truth signature
        label = match_strategy(by_id[r.qid], r.signature)
        assert (label == r.strategy) == r.matched, r
        assert r.signature.endswith("|correct") == r.correct
        ok += r.matched
    assert ok >= BAR * len(results)


def test_default_max_turns_fits_every_strategy(env):
    longest = max(len(s.steps) for q in env.questions for s in q.strategies)
    assert longest + 1 <= EnvConfig().max_turns


def test_batched_oracle_equals_single_runs(env, runs):
    _, results = runs
    idx = {q.qid: i for i, q in enumerate(env.questions)}
    for r in results[::40]:
        one = run_oracle(env, idx[r.qid], r.strategy)
        assert (one.queries, one.correct, one.signature, one.matched) == (r.queries, r.correct, r.signature, r.matched)


def test_cli_check_reuses_the_index(smoke, capsys):
    from searchgym.cli import main

    mtime = (smoke / "index-dense" / "manifest.json").stat().st_mtime_ns
    assert main(["world", "check", str(smoke), "--limit", "3", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"single_hop"' in out and "dense retriever" in out
    assert (smoke / "index-dense" / "manifest.json").stat().st_mtime_ns == mtime
