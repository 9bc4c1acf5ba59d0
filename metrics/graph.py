"""Reasoning graphs of an agent's hidden states (Topology of Reasoning, arXiv 2506.05744).

Does the agent come back to an intermediate state it was already in? Each trajectory is cut
into reasoning steps, each step becomes a vector, the vectors of ALL steps of an evaluation
are clustered with KMeans, and each trajectory becomes a path over the cluster ids (the
graph's nodes). Cycles, diameter, clustering and small-world structure are read off the
paths with networkx. The same construction over the embeddings of the search queries a
trajectory issued is the text-side view (``query_graph_metrics``: does the agent re-issue a
query it already sent?).

**Reasoning steps** (``reasoning_step_ids``), over the policy tokens of a trajectory in order
(observation tokens are not policy tokens), from the engine's per-token segment labels
(``think``/``query``/``answer``/``other``; tags and untagged text are ``other``):

1. one step per maximal run of consecutive policy tokens with the same label among
   ``think``, ``query`` (a ``<search>`` query) and ``answer``; ``other`` tokens belong to no
   step (a tag always separates two segments, and an observation resets the label);
2. inside ``think``, a token whose decoded text contains ``"\\n"`` closes its step (it is the
   step's last token), so a think segment is split into newline-delimited sub-steps (the
   paper splits the whole text on ``"\\n"``); query and answer segments are one step each;
3. think steps with fewer than ``min_tokens = 2`` tokens are dropped (their tokens get step
   id -1), as the paper drops lines of 5 characters or fewer: a lone newline or a one-token
   fragment is not a reasoning step. Query and answer segments are kept from one token
   (``min_segment_tokens = 1``): with a tokenizer trained on the world's corpus an entity
   name is one token, and dropping one-token queries would drop the searches (smoke world,
   16 scripted forward episodes under the smoke model's tokenizer, which keeps entity names
   whole: all 40 queries and all 16 answers were one token). Pass ``min_segment_tokens=2``
   for the uniform < 2 rule.

**Step vector**: the mean, over the step's policy tokens, of the hidden state at the chosen
layer at each token's own position (``Trajectory.layer_states``; the state after reading
the token, as the paper's teacher-forced ``hidden_states[layer]``; the notes use the layer
at 0.9 of the depth). Not the state that produced the token (the engine's final-norm
``hidden_states`` convention): that one never reads the step's last token, so a one-token
query's vector would be the state at its ``<search>`` tag and carry nothing of the query
(measured on the smoke model: at layer 0 every one-token query got the same vector).

**Graph** (as ``gouki510/Topology_of_Reasoning`` ``src/utils.py::analyze_graph_v2``, except
the number of clusters): nodes are ``KMeans(n_clusters=k, n_init=10, random_state=0)``
clusters fitted on all step vectors given; ``k = clamp(round(sqrt(num_steps)), 2, 200)``
(the paper fixes 200 for thousands of steps), and at most the number of distinct vectors
(one cluster when all are identical). Each trajectory is the path of its steps' cluster ids;
a directed edge u -> v joins consecutive steps, self-loops (u = v) are dropped, and the edge
weight is the Euclidean distance between the two raw step vectors (not the centroids); an
edge seen several times keeps its smallest distance (the reference keeps every parallel
edge, which gives the same shortest paths).

**Per trajectory**: ``has_cycle``: a node is revisited with at least one other node in
between (the first such node is the loop node); ``loop_count``: the number of entries into
the loop node (consecutive repeats collapsed) minus 1, 0 without a cycle; ``path_length``:
the number of steps; ``diameter``: of the trajectory's own graph (the paper's per-sample
diameter).

**Per graph** (all trajectories of the evaluation together, and each question group alone;
``graph_topology``):

- ``diameter``: the largest weighted shortest-path length (Dijkstra) over ordered pairs u != v
  with v reachable from u, on the directed graph; 0.0 for a graph without edges.
- ``clustering``: average clustering coefficient of the undirected graph over its nodes of
  degree >= 2 (as the reference; 0.0 when there are none); ``C_rand = K / (N - 1)`` with N the
  nodes that have an edge and K their mean undirected degree; ``clustering_norm = C / C_rand``.
- ``small_world``: ``S = (C / C_rand) / (L / L_rand)``, L = mean unweighted shortest-path
  length (hops) over connected ordered pairs of the undirected graph, ``L_rand = ln N / ln K``
  (Erdos-Renyi estimate; the reference's caller expects this index but its code does not
  return it). NaN where undefined: N < 2 (no C_rand), K <= 1 (no L_rand: a graph of isolated
  edges), or L = 0; the reason is in ``result["undefined"]``.

``cycle_rate`` is the share of trajectories with a cycle and ``loops_mean`` the mean loop
count, over trajectories with at least one step (``trajectories_with_steps``). Search-agent
caveat: a think -> query -> think alternation revisits a "think" cluster whenever two think
steps share one, so cycles can be structural (measured: every one of the 8 straight-line
scripted forward episodes of the tests cycles this way). ``graph_metrics_from_records(kinds=
("query",))`` (or filtering by ``step_kinds``) builds the graph of one step kind alone; over
the query steps, a repeated search still cycles and a two-query straight line cannot.

Everything is deterministic for a given input (fixed ``random_state``/``n_init``, nodes and
edges in first-seen order). Imports no other searchgym package.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Callable, Hashable, Mapping, Sequence

import networkx as nx
import numpy as np

__all__ = [
    "STEP_KINDS",
    "reasoning_step_ids",
    "step_vectors_from_tokens",
    "num_clusters_for",
    "cluster_steps",
    "path_cycle",
    "path_graph",
    "graph_diameter",
    "graph_topology",
    "reasoning_graph_metrics",
    "query_graph_metrics",
    "graph_metrics_from_records",
]

#: Segment labels that form reasoning steps (``other``: tags and untagged text, no step).
STEP_KINDS = ("think", "query", "answer")

EmbedFn = Callable[[list[str]], np.ndarray]


# ----------------------------------------------------------------------------- steps
def reasoning_step_ids(segments: Sequence[str], newline: Sequence[bool], *, min_tokens: int = 2,
                       min_segment_tokens: int = 1) -> list[int]:
    """Step id of each policy token (0, 1, ... in order; -1 = in no step), by the module
    rule. ``segments``: the label of each policy token (think|query|answer|other);
    ``newline``: whether each token's decoded text contains ``"\\n"`` (same length).
    Think steps need ``min_tokens`` tokens, query/answer steps ``min_segment_tokens``."""
    if len(segments) != len(newline):
        raise ValueError(f"segments ({len(segments)}) and newline ({len(newline)}) must have one entry per policy token")
    raw: list[tuple[str, list[int]]] = []  # (kind, token positions) of each candidate step
    cur_kind, cur = None, None
    for i, (seg, nl) in enumerate(zip(segments, newline)):
        if seg not in STEP_KINDS:
            cur_kind, cur = None, None
            continue
        if cur is None or seg != cur_kind:
            cur = []
            raw.append((seg, cur))
            cur_kind = seg
        cur.append(i)
        if seg == "think" and nl:
            cur = None  # the newline token closes its step; the next think token opens one
    out = [-1] * len(segments)
    sid = 0
    for kind, toks in raw:
        if len(toks) < (min_tokens if kind == "think" else min_segment_tokens):
            continue
        for i in toks:
            out[i] = sid
        sid += 1
    return out


def step_vectors_from_tokens(states, step_ids: Sequence[int],
                             segments: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(step vectors ``[num_steps, d]`` float64: the mean state of each step's tokens, step
    kinds): ``states`` is ``[num_policy_tokens, d]``, ``step_ids`` its step id per row (-1 =
    none), ``segments`` the policy tokens' labels (for the kinds; else ``""``)."""
    h = np.asarray(states, dtype=np.float64)
    ids = np.asarray(step_ids, dtype=np.int64)
    if h.ndim != 2 or h.shape[0] != ids.shape[0]:
        raise ValueError(f"states must be [num_policy_tokens, d] with one row per step id; got {h.shape} "
                         f"for {ids.shape[0]} step ids")
    n = int(ids.max()) + 1 if ids.size and ids.max() >= 0 else 0
    if n == 0:
        return np.zeros((0, h.shape[1])), []
    sel = ids >= 0
    sums = np.zeros((n, h.shape[1]))
    np.add.at(sums, ids[sel], h[sel])
    counts = np.bincount(ids[sel], minlength=n)
    if (counts == 0).any():
        raise ValueError("step ids must be 0..S-1 with every id used")
    kinds = [""] * n
    if segments is not None:
        for i, s in zip(ids, segments):
            if i >= 0 and not kinds[i]:
                kinds[i] = s
    return sums / counts[:, None], kinds


# ----------------------------------------------------------------------------- clusters
def num_clusters_for(num_steps: int, max_clusters: int = 200) -> int:
    """``clamp(round(sqrt(num_steps)), 2, max_clusters)``."""
    return int(min(max(round(math.sqrt(max(num_steps, 0))), 2), max_clusters))


def cluster_steps(vectors, num_clusters: int | None = None, *, max_clusters: int = 200, n_init: int = 10,
                  random_state: int = 0) -> tuple[np.ndarray, int]:
    """(cluster id per row, clusters used) of KMeans over ``vectors`` ``[n, d]``.

    ``num_clusters`` defaults to ``num_clusters_for(n, max_clusters)``; it is capped at the
    number of distinct rows (identical rows always share a cluster); one distinct row (or
    one row) gives one cluster without KMeans; no rows give ``([], 0)``.
    """
    # local: importing sklearn.cluster takes ~1.2 s, and the rollout engine imports this
    # module for reasoning_step_ids alone
    from sklearn.cluster import KMeans

    x = np.asarray(vectors, dtype=np.float64)
    n = x.shape[0] if x.ndim == 2 else 0
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    if not np.isfinite(x).all():
        raise ValueError("step vectors must be finite")
    k = num_clusters_for(n, max_clusters) if num_clusters is None else int(num_clusters)
    if k < 1:
        raise ValueError(f"num_clusters must be >= 1, got {k}")
    distinct = np.unique(x, axis=0).shape[0]
    k = min(k, distinct)
    if k == 1:
        return np.zeros(n, dtype=np.int64), 1
    with warnings.catch_warnings():
        # near-duplicate rows can leave fewer distinct clusters than k; KMeans then warns
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=k, n_init=n_init, random_state=random_state).fit(x)
    return km.labels_.astype(np.int64), k


# ----------------------------------------------------------------------------- paths
def path_cycle(path: Sequence[Hashable]) -> tuple[bool, int]:
    """(has_cycle, loop_count) of a path of node ids (the reference's rule, see the module
    doc): the first node revisited with another node in between is the loop node; loop
    count = its entries (consecutive repeats collapsed) - 1."""
    seen: dict[Hashable, int] = {}
    entry = None
    for i, node in enumerate(path):
        if node in seen and i - seen[node] > 1:
            entry = node
            break
        seen[node] = i
    if entry is None:
        return False, 0
    visits, prev = 0, object()
    for node in path:
        if node == entry and node != prev:
            visits += 1
        prev = node
    return True, max(visits - 1, 0)


def path_graph(paths: Sequence[Sequence[Hashable]], distances: Sequence[Sequence[float]]) -> nx.DiGraph:
    """The directed graph of ``paths`` (``distances[i][j]``: Euclidean distance of step j to
    step j+1 of path i): self-loops dropped, parallel edges keep the smallest distance
    (``weight``) and their number (``count``). Nodes without an edge are left out."""
    g = nx.DiGraph()
    for path, dist in zip(paths, distances):
        if len(dist) != max(len(path) - 1, 0):
            raise ValueError(f"a path of {len(path)} steps needs {max(len(path) - 1, 0)} distances, got {len(dist)}")
        for u, v, w in zip(path, path[1:], dist):
            if u == v:
                continue
            if g.has_edge(u, v):
                e = g[u][v]
                e["weight"] = min(e["weight"], float(w))
                e["count"] += 1
            else:
                g.add_edge(u, v, weight=float(w), count=1)
    return g


def graph_diameter(g: nx.DiGraph) -> float:
    """Largest weighted (``weight``) shortest-path length over reachable ordered pairs
    u != v of the directed graph; 0.0 without edges."""
    diameter = 0.0
    for _, lengths in nx.all_pairs_dijkstra_path_length(g, weight="weight"):
        for d in lengths.values():
            diameter = max(diameter, float(d))
    return diameter


def graph_topology(g: nx.DiGraph) -> dict[str, Any]:
    """Diameter, clustering, clustering_norm, small_world (see the module doc) of a path
    graph, with ``nodes``, ``edges``, ``mean_degree``, ``hops_mean`` (L) and
    ``undefined: {metric: reason}`` for the NaN entries."""
    undefined: dict[str, str] = {}
    n_nodes, n_edges = g.number_of_nodes(), g.number_of_edges()
    diameter = graph_diameter(g)
    u = g.to_undirected(as_view=False)
    deg = dict(u.degree())
    cc = nx.clustering(u)
    core = [cc[v] for v in u.nodes if deg[v] >= 2]
    clustering = float(np.mean(core)) if core else 0.0
    mean_degree = (sum(deg.values()) / n_nodes) if n_nodes else math.nan
    nan = math.nan
    if n_nodes < 2:
        c_rand = nan
        undefined["clustering_norm"] = f"C_rand = K/(N-1) needs N >= 2 nodes with an edge (N = {n_nodes})"
    else:
        c_rand = mean_degree / (n_nodes - 1)
    clustering_norm = clustering / c_rand if math.isfinite(c_rand) and c_rand > 0 else nan
    total, pairs = 0, 0
    for _, lengths in nx.all_pairs_shortest_path_length(u):
        for d in lengths.values():
            if d > 0:
                total += d
                pairs += 1
    hops = total / pairs if pairs else nan
    if "clustering_norm" in undefined:
        small_world = nan
        undefined["small_world"] = undefined["clustering_norm"]
    elif not mean_degree > 1:
        small_world = nan
        undefined["small_world"] = (f"L_rand = ln N / ln K needs mean degree K > 1 (K = {mean_degree:.3g}: "
                                    "every node has one neighbour)")
    elif not hops > 0:
        small_world = nan
        undefined["small_world"] = "no connected node pairs (L = 0)"
    else:
        l_rand = math.log(n_nodes) / math.log(mean_degree)
        small_world = clustering_norm / (hops / l_rand)
    return {"diameter": diameter, "clustering": clustering, "clustering_norm": clustering_norm,
            "small_world": small_world, "nodes": n_nodes, "edges": n_edges, "mean_degree": mean_degree,
            "hops_mean": hops, "undefined": undefined}


def _nanmean(v) -> float:
    a = np.asarray([x for x in v if x is not None], dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def _path_summary(paths) -> dict[str, float]:
    cyc = [path_cycle(p) for p in paths]
    return {"cycle_rate": _nanmean([float(c) for c, _ in cyc]), "loops_mean": _nanmean([n for _, n in cyc]),
            "path_length_mean": _nanmean([len(p) for p in paths])}


# ----------------------------------------------------------------------------- metrics
def reasoning_graph_metrics(steps: Sequence, groups: Sequence[Hashable] | None = None, *,
                            num_clusters: int | None = None, max_clusters: int = 200, n_init: int = 10,
                            random_state: int = 0, prefix: str = "") -> dict[str, Any]:
    """Reasoning-graph metrics of one evaluation.

    ``steps[i]``: the step vectors ``[S_i, d]`` of trajectory i in order (S_i may be 0);
    ``groups[i]``: its question/group key (default: one group per trajectory).

    Returns a flat dict (keys prefixed by ``prefix``): ``cycle_rate``, ``loops_mean``,
    ``path_length_mean``, ``diameter_traj_mean`` (per-trajectory graphs), ``diameter``,
    ``clustering``, ``clustering_norm``, ``small_world``, ``num_nodes``, ``num_edges``
    (the graph of all trajectories), ``group_mean_<m>`` for m in diameter,
    clustering_norm, small_world, cycle_rate, loops (mean over groups of each group's own
    graph and paths, NaN groups left out), ``num_clusters``, ``num_steps``, ``num_trajectories``,
    ``trajectories_with_steps``; ``per_group: {key: {cycle_rate, loops_mean,
    path_length_mean, diameter, clustering_norm, small_world, num_trajectories,
    num_steps}}``; ``per_trajectory: [{has_cycle, loop_count, path_length, diameter, path}]``
    in input order (``path``: cluster ids); ``undefined: {metric: reason}`` for NaN entries
    of the whole-evaluation graph. Trajectories without steps count in
    ``num_trajectories`` only.
    """
    n = len(steps)
    if groups is None:
        groups = list(range(n))
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} trajectories")
    mats = []
    for i, s in enumerate(steps):
        a = np.asarray(s, dtype=np.float64)
        if a.size == 0:
            a = np.zeros((0, 0))
        if a.ndim != 2:
            raise ValueError(f"trajectory {i}: step vectors must be [num_steps, d], got shape {a.shape}")
        mats.append(a)
    dims = {a.shape[1] for a in mats if a.shape[0]}
    if len(dims) > 1:
        raise ValueError(f"step vectors of different widths {sorted(dims)}: one layer of one model per call")
    counts = [a.shape[0] for a in mats]
    allv = np.concatenate([a for a in mats if a.shape[0]]) if any(counts) else np.zeros((0, 0))
    labels, k = cluster_steps(allv, num_clusters, max_clusters=max_clusters, n_init=n_init,
                              random_state=random_state)
    paths, dists, per_traj = [], [], []
    off = 0
    for a, c in zip(mats, counts):
        p = [int(x) for x in labels[off:off + c]]
        off += c
        d = np.linalg.norm(np.diff(a, axis=0), axis=1).tolist() if c > 1 else []
        paths.append(p)
        dists.append(d)
        if c:
            has, loops = path_cycle(p)
            diam = graph_diameter(path_graph([p], [d]))
            per_traj.append({"has_cycle": has, "loop_count": loops, "path_length": c, "diameter": diam, "path": p})
        else:
            per_traj.append({"has_cycle": None, "loop_count": None, "path_length": 0, "diameter": None, "path": []})
    live = [i for i in range(n) if counts[i]]
    whole = graph_topology(path_graph([paths[i] for i in live], [dists[i] for i in live]))
    out: dict[str, Any] = {
        **_path_summary([paths[i] for i in live]),
        "diameter_traj_mean": _nanmean([per_traj[i]["diameter"] for i in live]),
        "diameter": whole["diameter"] if live else math.nan,
        "clustering": whole["clustering"] if live else math.nan,
        "clustering_norm": whole["clustering_norm"],
        "small_world": whole["small_world"],
        "num_nodes": whole["nodes"],
        "num_edges": whole["edges"],
    }
    undefined = dict(whole["undefined"])
    if not live:
        for key in ("cycle_rate", "loops_mean", "diameter", "clustering"):
            undefined[key] = "no trajectory has a step"
    per_group: dict[Hashable, dict[str, float]] = {}
    order: dict[Hashable, list[int]] = {}
    for i, key in enumerate(groups):
        order.setdefault(key, []).append(i)
    for key, idx in order.items():
        gl = [i for i in idx if counts[i]]
        topo = graph_topology(path_graph([paths[i] for i in gl], [dists[i] for i in gl]))
        per_group[key] = {
            **_path_summary([paths[i] for i in gl]),
            "diameter": topo["diameter"] if gl else math.nan,
            "clustering_norm": topo["clustering_norm"],
            "small_world": topo["small_world"],
            "num_trajectories": len(idx),
            "num_steps": int(sum(counts[i] for i in idx)),
        }
    for m, name in (("diameter", "diameter"), ("clustering_norm", "clustering_norm"),
                    ("small_world", "small_world"), ("cycle_rate", "cycle_rate"), ("loops_mean", "loops")):
        out[f"group_mean_{name}"] = _nanmean([g[m] for g in per_group.values()])
    out.update(num_clusters=int(k), num_steps=int(sum(counts)), num_trajectories=n, trajectories_with_steps=len(live))
    res = {f"{prefix}{key}": v for key, v in out.items()}
    res[f"{prefix}per_group"] = per_group
    res[f"{prefix}per_trajectory"] = per_traj
    res[f"{prefix}undefined"] = {f"{prefix}{key}": why for key, why in undefined.items()}
    return res


_SPACE = re.compile(r"\s+")


def _norm_query(q: str) -> str:
    return _SPACE.sub(" ", q.strip().lower())


def query_graph_metrics(queries: Sequence[Sequence[str]], groups: Sequence[Hashable] | None = None,
                        embed_fn: EmbedFn | None = None, **kw) -> dict[str, Any]:
    """The reasoning graph over search queries (text view): steps = a trajectory's queries in
    order, step vector = ``embed_fn`` embedding (default: the shared MiniLM embedder of
    ``metrics.diversity``). Keys as ``reasoning_graph_metrics`` prefixed ``query_``, plus
    ``query_exact_cycle_rate``: the share of trajectories (with >= 1 query) that re-issue a
    query string (lower-cased, spaces collapsed) after another one. Each distinct string is
    embedded once, so equal strings get equal vectors (and one cluster)."""
    qs = [[_norm_query(str(q)) for q in tr] for tr in queries]
    uniq = list(dict.fromkeys(q for tr in qs for q in tr))
    if uniq:
        if embed_fn is None:
            from .diversity import default_embedder

            embed_fn = default_embedder()
        emb = np.asarray(embed_fn(uniq), dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(uniq):
            raise ValueError(f"embed_fn returned shape {emb.shape} for {len(uniq)} texts")
        row = {q: i for i, q in enumerate(uniq)}
        steps = [emb[[row[q] for q in tr]] if tr else np.zeros((0, emb.shape[1])) for tr in qs]
    else:
        steps = [np.zeros((0, 0)) for _ in qs]
    res = reasoning_graph_metrics(steps, groups, prefix="query_", **kw)
    exact = [path_cycle(tr)[0] for tr in qs if tr]
    res["query_exact_cycle_rate"] = _nanmean([float(x) for x in exact])
    return res


def _matrix(v, where: str, field: str) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {field!r} must be a numeric matrix") from None
    if a.size == 0:
        return a.reshape(0, a.shape[-1] if a.ndim == 2 else 0)
    if a.ndim != 2 or not np.isfinite(a).all():
        raise ValueError(f"{where}: field {field!r} must be a finite [rows, d] matrix, got shape {a.shape}")
    return a


def _policy_segments(rec: Mapping[str, Any], num_policy: int) -> list[str] | None:
    """The policy tokens' segment labels of a record (``segments`` per response token,
    selected by ``loss_mask``; or already one per policy token)."""
    seg, mask = rec.get("segments"), rec.get("loss_mask")
    if seg is None:
        return None
    if mask is not None and len(mask) == len(seg):
        seg = [s for s, m in zip(seg, mask) if m]
    return list(seg) if len(seg) == num_policy else None


def graph_metrics_from_records(records: Sequence[Mapping[str, Any]], *, embed_fn: EmbedFn | None = None,
                               queries: bool = True, kinds: Sequence[str] | None = None,
                               where: Sequence[str] | None = None, **kw) -> dict[str, Any]:
    """Both graph views of episode records (docs/contracts.md, "metrics"), with
    ``"skipped": {view: reason}`` for a view whose fields are missing.

    Hidden-state view: ``step_vectors`` (``[num_steps, d]``), else ``layer_states``
    (``[num_policy_tokens, d]``) + ``step_ids`` (per policy token, -1 = none); ``kinds``
    keeps only steps whose ``step_kinds`` entry is listed (needs ``step_kinds``).
    Query view (``queries=True``): ``queries``. Group key: ``group``, else ``question_id``.
    """
    where = list(where) if where is not None else [f"record {i}" for i in range(len(records))]
    groups = [r.get("group", r.get("question_id", i)) for i, r in enumerate(records)]
    groups = [g if isinstance(g, Hashable) else str(g) for g in groups]
    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    has_steps = [("step_vectors" in r and r["step_vectors"] is not None)
                 or (r.get("layer_states") is not None and r.get("step_ids") is not None) for r in records]
    if records and all(has_steps):
        steps = []
        for i, r in enumerate(records):
            if r.get("step_vectors") is not None:
                s = _matrix(r["step_vectors"], where[i], "step_vectors")
                sk = r.get("step_kinds")
            else:
                h = _matrix(r["layer_states"], where[i], "layer_states")
                ids = r["step_ids"]
                try:
                    pol = _policy_segments(r, len(ids))
                    s, sk = step_vectors_from_tokens(h, ids, pol)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{where[i]}: fields 'layer_states' + 'step_ids': {exc}") from None
                sk = sk if pol is not None else None
            if kinds is not None:
                if sk is None or len(sk) != s.shape[0]:
                    raise ValueError(f"{where[i]}: filtering by kinds needs step_kinds with one entry per step")
                s = s[[j for j, kd in enumerate(sk) if kd in kinds]] if s.shape[0] else s
            steps.append(s)
        out.update(reasoning_graph_metrics(steps, groups, prefix="graph_", **kw))
    else:
        missing = sum(not h for h in has_steps)
        skipped["graph"] = (f"{missing} of {len(records)} records carry no step_vectors (or layer_states + step_ids)"
                            if records else "no records")
    if queries:
        qs = []
        for i, r in enumerate(records):
            q = r.get("queries")
            if q is None:
                q = []
            if not isinstance(q, (list, tuple)) or not all(isinstance(x, str) for x in q):
                raise ValueError(f"{where[i]}: field 'queries' must be a list of strings")
            qs.append(list(q))
        if any(qs):
            out.update(query_graph_metrics(qs, groups, embed_fn=embed_fn, **kw))
        else:
            skipped["query_graph"] = "no record has a search query"
    out["skipped"] = skipped
    return out
