"""``searchgym diversity ROLLOUTS.jsonl``: every metric of an eval/rollout file."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _parse_k(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k wants comma-separated integers, got {text!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"--k wants integers >= 1, got {text!r}")
    return ks


def read_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """Read a JSONL file of episode records; returns (records, ``file:line`` per record).
    A malformed line or a line that is not a JSON object raises ValueError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: rollouts file not found")
    records, where = [], []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
            where.append(f"{path}:{lineno}")
    return records, where


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def _run(args) -> int:
    from .summary import summarize_rollouts

    records, where = read_records(args.rollouts)
    if not records:
        raise ValueError(f"{args.rollouts}: no episode records")
    res = summarize_rollouts(
        records, k=args.k, vendi=args.vendi, where=where, er_window=args.er_window, erv_stride=args.stride
    )
    graph = _graph_metrics(records, where, args) if args.graph else {}
    per_group = {key: graph.pop(key) for key in ("graph_per_group", "query_per_group") if key in graph}
    undefined = {**graph.pop("graph_undefined", {}), **graph.pop("query_undefined", {})}
    res["skipped"] = {**res.get("skipped", {}), **graph.pop("skipped", {}), **undefined}
    res.update(graph)
    if args.json:
        print(json.dumps(_finite_or_none({**res, **per_group}), indent=2))
        return 0
    skipped = res.pop("skipped")
    width = max(len(k) for k in res)
    print(f"{args.rollouts}: {len(records)} episodes")
    for key, v in res.items():
        print(f"  {key:<{width}}  {_fmt(v)}")
    if skipped:
        print("skipped:")
        for key, why in skipped.items():
            print(f"  {key}: {why}")
    return 0


def _graph_metrics(records: list[dict], where: list[str], args) -> dict:
    """The reasoning-graph metrics (``graph_*`` from ``step_vectors``, ``query_*`` from
    ``queries`` when MiniLM is allowed), without the per-trajectory lists."""
    from .graph import graph_metrics_from_records

    out = graph_metrics_from_records(records, queries=args.vendi, where=where)
    if not args.vendi:
        out["skipped"]["query_graph"] = "needs the MiniLM query embeddings (--vendi)"
    for key in ("graph_per_trajectory", "query_per_trajectory"):
        out.pop(key, None)
    return out


def _finite_or_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _finite_or_none(x) for k, x in v.items()}
    return v


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "diversity",
        help="token entropy, effective rank, strategy diversity, reasoning graphs and pass@k of a rollout file",
        description="Print every metric of an eval/rollout JSONL file (one episode record per "
        "line; fields in docs/contracts.md, 'metrics'). Missing optional fields skip that metric.",
    )
    p.add_argument("rollouts", help="JSONL file of episode records")
    p.add_argument("--json", action="store_true", help="print one JSON object (NaN as null)")
    p.add_argument("--k", type=_parse_k, default=[1, 4], metavar="K[,K...]", help="pass@k values (default 1,4)")
    p.add_argument(
        "--vendi", action=argparse.BooleanOptionalAction, default=True,
        help="MiniLM embeddings of text (loads the model; default on): the Vendi score of trajectory "
        "text and the reasoning graph over search queries (query_*)",
    )
    p.add_argument(
        "--graph", action=argparse.BooleanOptionalAction, default=True,
        help="reasoning-graph metrics (graph_*: cycles, diameter, small-world index of the records' "
        "step_vectors; query_*: the same over the queries) (default on)",
    )
    p.add_argument("--er-window", type=int, default=64, help="tokens in the length-controlled ER window (default 64)")
    p.add_argument("--stride", type=int, default=20, help="ERV/ERA prefix stride in tokens (default 20)")
    p.set_defaults(func=_run)
