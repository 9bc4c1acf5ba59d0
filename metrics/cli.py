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
    if args.json:
        clean = {key: (None if isinstance(v, float) and not math.isfinite(v) else v) for key, v in res.items()}
        print(json.dumps(clean, indent=2))
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


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "diversity",
        help="token entropy, effective rank, strategy diversity and pass@k of a rollout file",
        description="Print every metric of an eval/rollout JSONL file (one episode record per "
        "line; fields in docs/contracts.md, 'metrics'). Missing optional fields skip that metric.",
    )
    p.add_argument("rollouts", help="JSONL file of episode records")
    p.add_argument("--json", action="store_true", help="print one JSON object (NaN as null)")
    p.add_argument("--k", type=_parse_k, default=[1, 4], metavar="K[,K...]", help="pass@k values (default 1,4)")
    p.add_argument(
        "--vendi", action=argparse.BooleanOptionalAction, default=True,
        help="Vendi score over MiniLM embeddings of trajectory text (loads the model; default on)",
    )
    p.add_argument("--er-window", type=int, default=64, help="tokens in the length-controlled ER window (default 64)")
    p.add_argument("--stride", type=int, default=20, help="ERV/ERA prefix stride in tokens (default 20)")
    p.set_defaults(func=_run)
