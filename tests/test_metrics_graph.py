"""Reasoning graphs (metrics/graph.py) and the rollout engine's layer-state capture.

Fast tests: the step rule, the cycle rule, hand-computed graph topology, the cluster-count
rule, the controls on constructed step vectors, determinism, records and the CLI. Slow
tests run the real thing on the smoke world (BM25 retriever): the tiny model's rollouts with
layer states (checked against a teacher-forced forward pass), the controls on those
rollouts and on scripted agents searching through the retriever, and the cost of the graph
metrics against an RL step of the smoke trainer measured in the same test.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest

from searchgym.metrics.graph import (
    cluster_steps,
    graph_metrics_from_records,
    graph_topology,
    num_clusters_for,
    path_cycle,
    path_graph,
    query_graph_metrics,
    reasoning_graph_metrics,
    reasoning_step_ids,
    step_vectors_from_tokens,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ----------------------------------------------------------------------------- rule
def test_step_rule_segments_newlines_and_short_steps():
    seg = ["other", "think", "think", "think", "think", "think", "other", "other",
           "query", "other", "other", "answer", "answer", "other"]
    nl = [False, False, True, False, True, False, False, True, False, False, False, False, False, False]
    ids = reasoning_step_ids(seg, nl)
    # think "a b\n" | "c d\n" | "e" (1 token: dropped) ; the newline after </think> is "other";
    # a one-token query is a step; the answer is one step
    assert ids == [-1, 0, 0, 1, 1, -1, -1, -1, 2, -1, -1, 3, 3, -1]
    assert reasoning_step_ids(seg, nl, min_segment_tokens=2) == [-1, 0, 0, 1, 1, -1, -1, -1, -1, -1, -1, 2, 2, -1]
    # a newline inside a query does not split it; a tag between two think runs does
    assert reasoning_step_ids(["query", "query", "query"], [False, True, False]) == [0, 0, 0]
    assert reasoning_step_ids(["think", "think", "other", "think", "think"], [False] * 5) == [0, 0, -1, 1, 1]
    assert reasoning_step_ids([], []) == []
    with pytest.raises(ValueError, match="one entry per policy token"):
        reasoning_step_ids(["think"], [])


def test_step_vectors_are_the_means_of_their_tokens():
    h = np.arange(12, dtype=np.float32).reshape(6, 2)
    vecs, kinds = step_vectors_from_tokens(h, [-1, 0, 0, 1, 1, 1], ["other", "think", "think", "query", "query", "query"])
    np.testing.assert_allclose(vecs, [[3.0, 4.0], [8.0, 9.0]])
    assert kinds == ["think", "query"]
    vecs, kinds = step_vectors_from_tokens(h, [-1] * 6)
    assert vecs.shape == (0, 2) and kinds == []
    with pytest.raises(ValueError, match="one row per step id"):
        step_vectors_from_tokens(h, [0, 0])


def test_cycle_rule_matches_the_reference():
    # analyze_graph_v2's loop rule (gouki510/Topology_of_Reasoning src/utils.py)
    assert path_cycle([0, 3, 5, 2, 3, 5, 7]) == (True, 1)  # 3 revisited with 5, 2 between
    assert path_cycle([0, 1, 2, 3]) == (False, 0)  # straight line
    assert path_cycle([1, 1, 2, 2, 3]) == (False, 0)  # repeats in a row are self-loops
    assert path_cycle([0, 1, 0, 1, 0]) == (True, 2)  # 0 entered three times
    assert path_cycle([0, 0, 1, 0, 0]) == (True, 1)  # runs collapse: two entries into 0
    assert path_cycle([4, 2, 2, 4]) == (True, 1)
    assert path_cycle([]) == (False, 0) and path_cycle([7]) == (False, 0)


def test_graph_topology_on_hand_computed_graphs():
    # A directed triangle 0->1->2->0 with weights 1, 2, 3: longest shortest path 1->2->0 = 5;
    # undirected triangle: C = 1, N = 3, K = 2, C_rand = 2/2 = 1, L = 1 hop,
    # L_rand = ln 3 / ln 2, S = (1/1) / (1/L_rand).
    t = graph_topology(path_graph([[0, 1, 2, 0]], [[1.0, 2.0, 3.0]]))
    assert t["diameter"] == pytest.approx(5.0)
    assert t["clustering"] == 1.0 and t["clustering_norm"] == pytest.approx(1.0)
    assert t["small_world"] == pytest.approx(math.log(3) / math.log(2))
    assert t["undefined"] == {}
    # A straight path 0->1->2->3: diameter = 1 + 1 + 1; no triangle: C = 0, S = 0.
    s = graph_topology(path_graph([[0, 1, 2, 3]], [[1.0, 1.0, 1.0]]))
    assert s["diameter"] == pytest.approx(3.0) and s["clustering"] == 0.0
    assert s["clustering_norm"] == 0.0 and s["small_world"] == 0.0
    assert s["mean_degree"] == pytest.approx(1.5) and s["hops_mean"] == pytest.approx(20 / 12)
    # Parallel edges keep the smallest distance; self-loops are dropped.
    g = path_graph([[0, 1, 1, 2], [0, 1]], [[4.0, 9.0, 1.0], [2.0]])
    assert sorted(g.edges(data="weight")) == [(0, 1, 2.0), (1, 2, 1.0)] and g[0][1]["count"] == 2
    # One edge: K = 1, no L_rand; no edge: no C_rand. NaN with a reason, never an exception.
    one = graph_topology(path_graph([[0, 1]], [[1.0]]))
    assert one["diameter"] == 1.0 and math.isnan(one["small_world"]) and "mean degree" in one["undefined"]["small_world"]
    none = graph_topology(path_graph([[5]], [[]]))
    assert none["diameter"] == 0.0 and math.isnan(none["clustering_norm"]) and "N >= 2" in none["undefined"]["clustering_norm"]
    with pytest.raises(ValueError, match="needs 2 distances"):
        path_graph([[0, 1, 2]], [[1.0]])


def test_cluster_count_rule():
    assert [num_clusters_for(n) for n in (0, 1, 3, 10, 100, 10**6)] == [2, 2, 2, 3, 10, 200]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    labels, k = cluster_steps(x)
    assert k == 7 and labels.shape == (50,) and set(labels.tolist()) <= set(range(7))
    lab2, k2 = cluster_steps(x)
    assert k2 == k and lab2.tolist() == labels.tolist()  # fixed random_state and n_init
    same, k1 = cluster_steps(np.ones((9, 4)))
    assert k1 == 1 and same.tolist() == [0] * 9  # identical rows: one cluster, no KMeans
    two, kk = cluster_steps(np.array([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5), num_clusters=6)
    assert kk == 2 and len(set(two[:5])) == 1 and two[0] != two[5]  # capped at distinct rows
    assert cluster_steps(np.zeros((0, 3)))[1] == 0
    with pytest.raises(ValueError, match="finite"):
        cluster_steps(np.array([[np.nan, 1.0], [0.0, 1.0]]))


# ----------------------------------------------------------------------------- controls
def _far_points(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    """n well-separated step vectors (scaled one-hot plus small noise)."""
    rng = np.random.default_rng(seed)
    return 10.0 * np.eye(n, d) + 0.01 * rng.normal(size=(n, d))


def test_controls_on_constructed_steps():
    p = _far_points(6)
    straight = p[[0, 1, 2, 3]]
    repeat = p[[0, 1, 4, 0]]  # comes back to step 0 after two other steps
    res = reasoning_graph_metrics([straight, repeat], ["a", "b"], num_clusters=5)
    tr = res["per_trajectory"]
    assert tr[0]["has_cycle"] is False and tr[0]["loop_count"] == 0
    assert tr[1]["has_cycle"] is True and tr[1]["loop_count"] == 1 and tr[1]["path"][0] == tr[1]["path"][3]
    assert res["cycle_rate"] == 0.5 and res["loops_mean"] == 0.5
    assert res["per_group"]["a"]["cycle_rate"] == 0.0 and res["per_group"]["b"]["cycle_rate"] == 1.0
    assert res["num_clusters"] == 5 and res["num_steps"] == 8 and res["path_length_mean"] == 4.0
    # Forced collapse: every sample of a question is a copy of one. Expected graph: identical
    # paths within a group, so each group's cycle rate is 0 or 1 and equals its one path's
    # has_cycle, its loops mean that path's loop count, and the group graph is that path's
    # own graph (group diameter = the path's diameter).
    base = [p[[0, 1, 2, 0, 3]], p[[2, 3, 4]], p[[5, 4, 5]]]
    batch, groups = [], []
    for g, s in enumerate(base):
        batch += [s.copy() for _ in range(4)]
        groups += [g] * 4
    col = reasoning_graph_metrics(batch, groups)
    for g in range(3):
        rows = [t for t, k in zip(col["per_trajectory"], groups) if k == g]
        assert len({tuple(t["path"]) for t in rows}) == 1
        one = reasoning_graph_metrics([base[g]], [g], num_clusters=col["num_clusters"])["per_trajectory"][0]
        pg = col["per_group"][g]
        assert pg["cycle_rate"] == float(rows[0]["has_cycle"]) and pg["loops_mean"] == rows[0]["loop_count"]
        assert pg["diameter"] == pytest.approx(rows[0]["diameter"]) and pg["num_trajectories"] == 4
        assert rows[0]["path_length"] == one["path_length"]
    assert col["cycle_rate"] == pytest.approx(np.mean([r["has_cycle"] for r in col["per_trajectory"][::4]]))


def test_deterministic_and_json_friendly():
    rng = np.random.default_rng(3)
    steps = [rng.normal(size=(int(rng.integers(0, 9)), 12)) for _ in range(24)]
    groups = [i // 6 for i in range(24)]
    a = reasoning_graph_metrics(steps, groups)
    b = reasoning_graph_metrics([s.copy() for s in steps], list(groups))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["num_trajectories"] == 24 and a["trajectories_with_steps"] == sum(len(s) > 0 for s in steps)
    empty = reasoning_graph_metrics([np.zeros((0, 4))] * 3, [0, 0, 1])
    assert math.isnan(empty["cycle_rate"]) and "no trajectory has a step" in empty["undefined"]["cycle_rate"]
    with pytest.raises(ValueError, match="different widths"):
        reasoning_graph_metrics([np.zeros((2, 3)), np.zeros((2, 4))], [0, 1])


def test_records_and_the_diversity_cli(tmp_path, capsys):
    from searchgym.cli import main

    p = _far_points(5)
    recs = []
    for g, path in enumerate([[0, 1, 0], [2, 3, 4]]):
        for j in range(2):
            recs.append({"group": g, "question_id": f"q{g}", "reward": 1.0, "correct": True,
                         "queries": ["x", "y"], "step_vectors": p[path].tolist(),
                         "step_kinds": ["think", "query", "think"]})
    direct = graph_metrics_from_records(recs, queries=False)
    assert direct["graph_cycle_rate"] == 0.5 and direct["graph_per_group"][0]["cycle_rate"] == 1.0
    think = graph_metrics_from_records(recs, queries=False, kinds=("think",))
    assert think["graph_num_steps"] == 8
    f = tmp_path / "roll.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["diversity", str(f), "--json", "--no-vendi"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["graph_cycle_rate"] == 0.5 and out["graph_num_clusters"] == direct["graph_num_clusters"]
    assert out["graph_per_group"]["0"]["cycle_rate"] == 1.0 and "query_graph" in out["skipped"]
    assert main(["diversity", str(f), "--no-vendi"]) == 0
    text = capsys.readouterr().out
    assert "graph_cycle_rate" in text and "graph_small_world" in text
    # Records without step vectors: the graph is skipped with its reason.
    f.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "step_vectors"}) + "\n" for r in recs))
    assert main(["diversity", str(f), "--json", "--no-vendi"]) == 0
    assert "no step_vectors" in json.loads(capsys.readouterr().out)["skipped"]["graph"]
    # A malformed field: one line naming file:line and the field, exit 2.
    bad = dict(recs[0], step_vectors=[[1.0, 2.0], [3.0]])
    f.write_text(json.dumps(recs[1]) + "\n" + json.dumps(bad) + "\n")
    assert main(["diversity", str(f), "--no-vendi"]) == 2
    err = capsys.readouterr().err
    assert f"{f}:2" in err and "step_vectors" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_world):
    """(world, model folder, model, tokenizer, envs): conftest's smoke world, BM25 index, untrained tiny
    model (smoke preset, tokenizer trained on the world)."""
    import torch

    from searchgym.agents.demos import world_envs
    from searchgym.agents.model import init_model, load_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("graph")
    world = smoke_world
    init_model("smoke", root / "m", world_dir=world, seed=0)
    model, tok = load_model(root / "m")
    envs = world_envs(world, "train", 64, index_kind="bm25")
    return world, root / "m", model, tok, envs


def _rollouts(smoke, hidden_layer=0.9, **kw):
    from searchgym.agents.rollout import RolloutConfig, RolloutEngine

    _, _, model, tok, envs = smoke
    cfg = dict(max_new_tokens=40, max_response_tokens=320, seed=5, n=4, hidden_layer=hidden_layer)
    cfg.update(kw)
    eng = RolloutEngine(model, tok, RolloutConfig(**cfg))
    return eng, eng.rollout_questions(envs, list(range(8)))


def _traj_steps(t):
    pol = [s for s, m in zip(t.segments, t.loss_mask) if m]
    return step_vectors_from_tokens(t.layer_states, t.step_ids, pol)


@pytest.mark.slow
def test_layer_states_equal_a_teacher_forced_forward(smoke):
    import torch

    from searchgym.agents.rollout import (RolloutConfig, RolloutEngine, teacher_forced_layer_states,
                                          trajectory_step_ids)

    _, _, model, tok, envs = smoke
    eng, trajs = _rollouts(smoke, hidden_layer=0.9, return_hidden_states=True)
    L = model.config.num_hidden_layers
    assert eng.layer_index == int(0.9 * L) == 1
    nl = {i: "\n" in tok.decode([i]) for i in range(len(tok))}
    worst = 0.0
    for t in trajs:
        assert t.hidden_layer == eng.layer_index
        assert t.layer_states.shape == (t.num_policy_tokens, model.config.hidden_size)
        assert t.layer_states.dtype == np.float32
        ids = torch.tensor([t.prompt_ids + t.response_ids])
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        P = len(t.prompt_ids)
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        # the state at each policy token's own position
        ref = out.hidden_states[t.hidden_layer][0, P:][mask].numpy()
        worst = max(worst, float(np.abs(ref - t.layer_states).max()))
        np.testing.assert_allclose(t.layer_states, ref, atol=1e-5, rtol=1e-4)
        pol_ids = [i for i, m in zip(t.response_ids, t.loss_mask) if m]
        pol_seg = [s for s, m in zip(t.segments, t.loss_mask) if m]
        assert t.step_ids == reasoning_step_ids(pol_seg, [nl[i] for i in pol_ids])
        rec = t.to_record()
        vecs, kinds = _traj_steps(t)
        np.testing.assert_allclose(rec["step_vectors"], vecs, atol=1e-6) if len(vecs) else None
        assert rec["step_kinds"] == kinds and rec["hidden_layer"] == 1
    assert sum(len(_traj_steps(t)[1]) for t in trajs) > 0  # the untrained model writes some tagged text
    # The batched teacher-forcing helper gives the same states and step ids.
    tf = teacher_forced_layer_states(model, trajs, 0.9, batch_size=7)
    for t, h in zip(trajs, tf):
        np.testing.assert_allclose(h, t.layer_states, atol=1e-5, rtol=1e-4)
        assert trajectory_step_ids(tok, t) == t.step_ids
    # The last layer (-1, after the final norm), in chunks of 5 rows, with a token budget that
    # cuts episodes mid-text (their last token is read by the end-of-chunk forward).
    _, last = _rollouts(smoke, hidden_layer=-1, max_batch_size=5, max_response_tokens=30, n=2)
    assert any(t.budget_exhausted for t in last)
    for t in last:
        assert t.hidden_layer == L
        with torch.no_grad():
            out = model(torch.tensor([t.prompt_ids + t.response_ids]), output_hidden_states=True)
        ref = out.hidden_states[-1][0, len(t.prompt_ids):][torch.tensor(t.loss_mask, dtype=torch.bool)].numpy()
        worst = max(worst, float(np.abs(ref - t.layer_states).max()))
        np.testing.assert_allclose(t.layer_states, ref, atol=1e-5, rtol=1e-4)
    # Off by default: nothing recorded, no record fields, the same tokens.
    _, off = _rollouts(smoke, hidden_layer=None)
    assert all(t.layer_states is None and t.step_ids is None for t in off)
    assert "step_vectors" not in off[0].to_record()
    assert [t.response_ids for t in off] == [t.response_ids for t in trajs]
    with pytest.raises(ValueError, match="outside the model's hidden states"):
        RolloutEngine(model, tok, RolloutConfig(hidden_layer=L + 1))
    for bad in (True, 1.5, 0.0, "0.9"):
        with pytest.raises(ValueError, match="hidden_layer"):
            RolloutConfig(hidden_layer=bad)
    print(f"layer states vs teacher forcing: max abs diff {worst:.2e}")


@pytest.mark.slow
def test_controls_on_real_rollouts_of_the_tiny_model(smoke):
    _, trajs = _rollouts(smoke)
    steps = [_traj_steps(t)[0] for t in trajs]
    groups = [t.group_id for t in trajs]
    res = reasoning_graph_metrics(steps, groups)
    assert res["num_steps"] == sum(len(s) for s in steps) > 0
    assert res["num_clusters"] == min(num_clusters_for(res["num_steps"]),
                                      len(np.unique(np.concatenate([s for s in steps if len(s)]), axis=0)))
    # Determinism: the same seed gives the same layer states and the same metrics.
    _, again = _rollouts(smoke)
    for a, b in zip(trajs, again):
        np.testing.assert_array_equal(a.layer_states, b.layer_states)
    res2 = reasoning_graph_metrics([_traj_steps(t)[0] for t in again], [t.group_id for t in again])
    assert json.dumps(res, sort_keys=True) == json.dumps(res2, sort_keys=True)

    # Forced collapse: each question's samples replaced by copies of its first sample with a
    # step. Expected: one distinct path per group; the group's cycle rate is that path's
    # has_cycle (0 or 1), its loops mean that loop count, its diameter that path's diameter.
    by_group: dict = {}
    for s, g in zip(steps, groups):
        if len(s):
            by_group.setdefault(g, s)
    col_steps, col_groups = [], []
    for g, s in by_group.items():
        col_steps += [s.copy() for _ in range(4)]
        col_groups += [g] * 4
    col = reasoning_graph_metrics(col_steps, col_groups)
    for g in by_group:
        rows = [t for t, k in zip(col["per_trajectory"], col_groups) if k == g]
        assert len({tuple(t["path"]) for t in rows}) == 1
        assert col["per_group"][g]["cycle_rate"] == float(rows[0]["has_cycle"])
        assert col["per_group"][g]["loops_mean"] == rows[0]["loop_count"]
        assert col["per_group"][g]["diameter"] == pytest.approx(rows[0]["diameter"])

    # Repeat / straight controls with the model's own step vectors: append a trajectory that
    # returns to a real step after another one (a, b, a) and one that does not (a, b).
    multi = next(s for s in steps if len(s) >= 2)
    a, b = multi[0], multi[-1]
    ctl = reasoning_graph_metrics(steps + [np.stack([a, b, a]), np.stack([a, b])], groups + ["rep", "line"])
    rep, line = ctl["per_trajectory"][-2:]
    assert rep["path"][0] == rep["path"][2] and line["has_cycle"] is False
    assert rep["has_cycle"] == (rep["path"][0] != rep["path"][1])


class RepeatFirstSearch:
    """A scripted agent that, after its second search, searches its first query again once
    (then carries on with the wrapped scripted strategy)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name + "+repeat"

    def act(self, states):
        out = []
        for st in states:
            searches = [t for t in st.turns if t.get("kind") == "search"]
            if len(searches) == 2 and not st.meta.get("repeated"):
                st.meta["repeated"] = True
                out.append(f"<think>Let me look at the first result again.</think>\n<search>{searches[0]['query']}</search>")
            else:
                out += self.inner.act([st])
        return out


def _teacher_forced_steps(model, tok, traj, layer: int):
    """Step vectors of a text trajectory: its episode tokenised as the engine would, one
    forward pass, the layer state at each policy token's own position (the engine's
    ``layer_states`` convention)."""
    import torch

    from searchgym.agents.episode import tokenize_episode

    ep = tokenize_episode(tok, traj.prompt, [(t["action"], t.get("observation")) for t in traj.turns])
    with torch.no_grad():
        out = model(torch.tensor([ep.prompt_ids + ep.response_ids]), output_hidden_states=True)
    P = len(ep.prompt_ids)
    mask = torch.tensor(ep.loss_mask, dtype=torch.bool)
    h = out.hidden_states[layer][0, P:][mask].numpy()
    pol = [i for i, m in zip(ep.response_ids, ep.loss_mask) if m]
    seg = [s for s, m in zip(ep.segments, ep.loss_mask) if m]
    return step_vectors_from_tokens(h, reasoning_step_ids(seg, ["\n" in tok.decode([i]) for i in pol]), seg)


@pytest.mark.slow
def test_controls_on_scripted_agents(smoke):
    from searchgym.agents.policy import run_policy
    from searchgym.agents.scripted import ScriptedPolicy
    from searchgym.metrics.diversity import default_embedder

    _, _, model, tok, envs = smoke
    qs = envs[0].unwrapped.questions
    two_hop = [i for i, q in enumerate(qs) if q.family == "multi_hop" and any(s.name == "forward" for s in q.strategies)
               and len(q.strategy("forward").steps) == 2][:8]
    assert len(two_hop) == 8
    straight = run_policy(ScriptedPolicy("forward"), envs, two_hop)
    repeat = run_policy(RepeatFirstSearch(ScriptedPolicy("forward")), envs, two_hop)
    for s, r in zip(straight, repeat):
        assert len(s.queries) == len(set(s.queries)) == 2 and s.correct
        assert r.queries == [r.queries[0], r.queries[1], r.queries[0]] and r.queries[0] != r.queries[1]
    trajs = straight + repeat
    groups = [f"{t.group_id}/{'line' if i < 8 else 'rep'}" for i, t in enumerate(trajs)]

    # Text view: the real MiniLM query embeddings.
    q = query_graph_metrics([t.queries for t in trajs], groups, embed_fn=default_embedder())
    assert q["query_exact_cycle_rate"] == 0.5  # every repeat, no straight line
    tr = q["query_per_trajectory"]
    assert not any(t["has_cycle"] for t in tr[:8])
    for t in tr[8:]:
        assert t["path"][0] == t["path"][2] and t["has_cycle"] == (t["path"][0] != t["path"][1])
    # one cluster per distinct query: the embedding view is the exact view
    distinct = len({x for t in trajs for x in t.queries})
    qx = query_graph_metrics([t.queries for t in trajs], groups, embed_fn=default_embedder(), num_clusters=distinct)
    assert [t["has_cycle"] for t in qx["query_per_trajectory"]] == [False] * 8 + [True] * 8

    # Hidden-state view: the scripted episodes teacher-forced through the tiny model.
    layer = int(0.9 * model.config.num_hidden_layers)
    st = [_teacher_forced_steps(model, tok, t, layer) for t in trajs]
    for vecs, kinds in st[8:]:
        assert kinds.count("query") == 3
    full = reasoning_graph_metrics([v for v, _ in st], groups)
    assert full["per_group"][groups[8]]["num_steps"] == len(st[8][0])
    # Every repeat cycles. So do the straight lines here: think -> query -> think comes back
    # to a think cluster (the structural cycles of a search agent; see the module doc).
    assert all(t["has_cycle"] for t in full["per_trajectory"][8:])
    # The query steps alone: a straight line (2 queries) never cycles. The repeated query's
    # state is close to its first occurrence (measured: 0.08-0.12 of its distance to the
    # other query) and lands in its cluster, so it cycles whenever the two queries' clusters
    # differ.
    qsteps = [v[[j for j, k in enumerate(kinds) if k == "query"]] for v, kinds in st]
    for q in qsteps[8:]:
        assert np.linalg.norm(q[2] - q[0]) < 0.5 * min(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[1]))
    qg = reasoning_graph_metrics(qsteps, groups)
    assert not any(t["has_cycle"] for t in qg["per_trajectory"][:8])
    for t in qg["per_trajectory"][8:]:
        assert t["path"][0] == t["path"][2]
        assert t["has_cycle"] == (t["path"][0] != t["path"][1])
    # Forced collapse of the scripted batch: 4 copies of each repeat episode per group.
    col_steps = [v.copy() for v, _ in st[8:] for _ in range(4)]
    col = reasoning_graph_metrics(col_steps, [g for g in groups[8:] for _ in range(4)])
    assert col["cycle_rate"] == 1.0 and all(p["cycle_rate"] == 1.0 for p in col["per_group"].values())
    assert col["loops_mean"] == pytest.approx(np.mean([t["loop_count"] for t in col["per_trajectory"]]))


@pytest.mark.slow
def test_cost_is_under_5_percent_of_an_rl_step(smoke, tmp_path):
    """Graph metrics of one RL step's batch (8 questions x 8 samples of the smoke model)
    against that RL step, on the same machine in the same process."""
    from searchgym.agents.policy import run_policy
    from searchgym.agents.rollout import RolloutConfig, RolloutEngine
    from searchgym.agents.scripted import ScriptedPolicy
    from searchgym.training.config import rl_preset
    from searchgym.training.rl import RLTrainer

    world, init, _, _, _ = smoke
    cfg = rl_preset("smoke", init=str(init), out=str(tmp_path / "rl"), world=str(world), retriever="bm25",
                    batch_questions=8, n_samples=8, threads=1, tensorboard=False, steps=3)
    trainer = RLTrainer(cfg, progress=False)
    step_s = min(trainer.step_once()["time/step_s"] for _ in range(2))  # the first step warms up

    # The step's batch with layer states (the engine with hidden_layer on, same settings).
    eng = RolloutEngine(trainer.model, trainer.tokenizer, RolloutConfig(
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, n=8, seed=1, max_batch_size=64,
        hidden_layer=0.9))
    trajs = eng.rollout_questions(trainer.envs, list(range(8)))
    # A trained agent's batch has more steps: scripted episodes of the same size, teacher-forced.
    qs = list(range(8))
    scripted = run_policy(ScriptedPolicy("mixture"), trainer.envs, qs, n=8)
    model = trainer.model.eval()
    layer = int(0.9 * model.config.num_hidden_layers)
    scripted_steps = [_teacher_forced_steps(model, trainer.tokenizer, t, layer)[0] for t in scripted]

    reasoning_graph_metrics(scripted_steps[:16], [0] * 16)  # imports (sklearn) happen once per process

    def graph_cost(batch_trajs, step_vectors=None):
        t0 = time.perf_counter()
        vecs = step_vectors if step_vectors is not None else [_traj_steps(t)[0] for t in batch_trajs]
        res = reasoning_graph_metrics(vecs, [t.group_id for t in batch_trajs])
        return time.perf_counter() - t0, res

    rollout_s, r1 = graph_cost(trajs)
    scripted_s, r2 = graph_cost(scripted, scripted_steps)
    assert r2["num_steps"] >= 4 * len(scripted)  # think, query, think, answer at least
    print(f"RL step {step_s:.2f} s; graph metrics: rollout batch {rollout_s * 1e3:.0f} ms "
          f"({r1['num_steps']} steps, {100 * rollout_s / step_s:.2f}%), scripted batch {scripted_s * 1e3:.0f} ms "
          f"({r2['num_steps']} steps, {100 * scripted_s / step_s:.2f}%)")
    assert rollout_s < 0.05 * step_s and scripted_s < 0.05 * step_s
