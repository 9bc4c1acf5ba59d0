"""CLI: ``searchgym world`` (generate), ``searchgym world check DIR``, ``searchgym envs list``,
``searchgym task add FILE | list | rm NAME`` (persistent user tasks under ``$SEARCHGYM_HOME/tasks``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from searchgym.envs import world as W
from searchgym.envs.env import EnvConfig, SearchEnv
from searchgym.envs.registry import (
    describe,
    list_envs,
    load_persistent_tasks,
    read_task_file,
    remove_task,
    save_task,
    user_tasks,
)
from searchgym.envs.strategies import format_table, oracle_table
from searchgym.retrieval.fileio import check_output
from searchgym.retrieval.index import load_retriever


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

    t = sub.add_parser("task", help="store, list or remove user tasks (YAML task files)",
                       description="User tasks: a YAML task file names the QA file(s), the corpus or index, the "
                       "retriever, the env settings and the prompt. Stored tasks live under $SEARCHGYM_HOME/tasks and "
                       "are registered as searchgym/<name> in every process (CLI commands, Ray workers).")
    tsub = t.add_subparsers(dest="task_command", metavar="SUBCOMMAND", required=True)
    add = tsub.add_parser("add", help="validate a task file and store it", description="Validate a YAML task file "
                          "(paths relative to it) and store it as $SEARCHGYM_HOME/tasks/<name>.yaml.")
    add.add_argument("file", help="task YAML (keys: name, qa, corpus | index, retriever, encoder, query_prefix, "
                     "passage_prefix, prompt, env, data_sources, description)")
    add.add_argument("--force", action="store_true", help="replace a different stored task of the same name")
    add.set_defaults(func=_task_add)
    tl = tsub.add_parser("list", help="print the user tasks (stored and from packages)")
    tl.add_argument("--json", action="store_true", help="print the records as JSON")
    tl.set_defaults(func=_task_list)
    rm = tsub.add_parser("rm", help="remove a stored task")
    rm.add_argument("name", help="task name (the part after searchgym/)")
    rm.set_defaults(func=_task_rm)


def _world(args: argparse.Namespace) -> int:
    cfg = W.WorldConfig(preset=args.preset, seed=args.seed, distractor_rate=args.distractor_rate)
    if args.out:  # refuse a foreign folder before spending time on generation
        check_output(args.out, W.is_world_dir, W.WORLD_MARKER, force=getattr(args, "force", False))
    t0 = time.perf_counter()
    world = W.generate_world(cfg)
    out = args.out or W.default_world_dir(args.preset, args.seed)
    W.write_world(world, out, force=getattr(args, "force", False))
    n = {s: len(q) for s, q in world.questions.items()}
    print(f"wrote {out}: {len(world.documents)} documents, {len(world.entities)} entities, "
          f"questions {n} in {time.perf_counter() - t0:.2f}s")
    return 0


def _check(args: argparse.Namespace) -> int:
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
    for env_id in list_envs():
        d = describe(env_id)
        extra = ", ".join(f"{k}={v}" for k, v in d.items() if k != "id")
        print(f"{env_id}\t{extra}")
    return 0


def _task_add(args: argparse.Namespace) -> int:
    spec = read_task_file(args.file)
    path = save_task(spec, force=args.force)
    n = len(set(spec.qa.values()))
    print(f"stored task {spec.env_id} in {path} ({n} QA file(s), {'index' if Path(spec.corpus_or_index).is_dir() else 'corpus'} "
          f"{spec.corpus_or_index}, {spec.retriever}, prompt={spec.prompt}, doc_chars={spec.config.doc_chars})")
    return 0


def _task_list(args: argparse.Namespace) -> int:
    load_persistent_tasks()
    specs = sorted(user_tasks(), key=lambda s: s.name)
    if args.json:
        print(json.dumps([{**s.to_record(), "source": s.source} for s in specs], indent=2))
        return 0
    if not specs:
        print("no user tasks (add one with `searchgym task add FILE`)")
    for s in specs:
        src = s.corpus_or_index
        print(f"{s.env_id}\t{s.retriever} over {src}\tqa {sorted(set(s.qa.values()))}\t(from {s.source})")
    return 0


def _task_rm(args: argparse.Namespace) -> int:
    path = remove_task(args.name)
    print(f"removed task searchgym/{args.name} ({path})")
    return 0
