"""CLI: ``searchgym world`` (generate), ``searchgym world check DIR``, ``searchgym envs list``."""

from __future__ import annotations

import argparse


def add_commands(sub) -> None:
    w = sub.add_parser("world", help="generate a synthetic world, or check one (`world check DIR`)",
                       description="Generate a synthetic world: corpus.jsonl, qa/<split>.jsonl, kg.json.")
    wsub = w.add_subparsers(dest="world_command", metavar="SUBCOMMAND")
    w.add_argument("--preset", default="small", choices=["smoke", "small", "full"])
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--distractor-rate", type=float, default=0.2)
    w.add_argument("--out", help="output directory (default: the cache under $SEARCHGYM_HOME/worlds)")
    w.set_defaults(func=_world)
    c = wsub.add_parser("check", help="run every valid strategy literally; print the success table",
                        description="Oracle check: execute each question's valid strategies through the env.")
    c.add_argument("dir", help="world directory")
    c.add_argument("--split", default="test", choices=["train", "validation", "test"])
    c.add_argument("--retriever", default="dense", choices=["dense", "bm25"])
    c.add_argument("--limit", type=int, default=None, help="questions per family (default: all)")
    c.add_argument("--batch-size", type=int, default=256, help="oracle runs stepped together (one retriever call per round)")
    c.add_argument("--json", action="store_true", help="print the table as JSON")
    c.set_defaults(func=_check)
    e = sub.add_parser("envs", help="list registered environments", description="Registered environments.")
    esub = e.add_subparsers(dest="envs_command", metavar="SUBCOMMAND", required=True)
    lst = esub.add_parser("list", help="print the registered env ids", description="Print the registered env ids.")
    lst.set_defaults(func=_list)


def _world(args: argparse.Namespace) -> int:
    import time

    from searchgym.envs import world as W

    cfg = W.WorldConfig(preset=args.preset, seed=args.seed, distractor_rate=args.distractor_rate)
    t0 = time.perf_counter()
    world = W.generate_world(cfg)
    out = args.out or W.default_world_dir(args.preset, args.seed)
    W.write_world(world, out)
    n = {s: len(q) for s, q in world.questions.items()}
    print(f"wrote {out}: {len(world.documents)} documents, {len(world.entities)} entities, "
          f"questions {n} in {time.perf_counter() - t0:.2f}s")
    return 0


def _check(args: argparse.Namespace) -> int:
    import json
    import time

    from searchgym.envs import world as W
    from searchgym.envs.env import EnvConfig, SearchEnv
    from searchgym.envs.strategies import format_table, oracle_table
    from searchgym.retrieval import load_retriever

    t0 = time.perf_counter()
    questions = W.load_questions(args.dir, args.split)
    retriever = load_retriever(W.ensure_index(args.dir, args.retriever))  # built once, then reused
    t1 = time.perf_counter()
    longest = max((len(s.steps) for q in questions for s in q.strategies), default=1)
    env = SearchEnv(questions, retriever, EnvConfig(max_turns=longest + 1), split=args.split)
    table = oracle_table(env, args.limit, batch_size=args.batch_size)
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    print(f"# {args.retriever} retriever, split {args.split}: index {t1 - t0:.1f}s, "
          f"oracle {time.perf_counter() - t1:.1f}s")
    return 0


def _list(args: argparse.Namespace) -> int:
    from searchgym.envs.registry import describe, list_envs

    for env_id in list_envs():
        d = describe(env_id)
        extra = ", ".join(f"{k}={v}" for k, v in d.items() if k != "id")
        print(f"{env_id}\t{extra}")
    return 0
