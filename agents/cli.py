"""``searchgym model init``, ``searchgym demos``, ``searchgym eval``.

Handlers import what they run: ``import searchgym.agents.demos`` (policies, envs, metrics)
would add 40-45 ms to every ``searchgym`` command's 365 ms start (``python -X importtime -c
"import searchgym.cli; import searchgym.agents.demos"``).
"""

from __future__ import annotations

import argparse
import json


def add_commands(sub) -> None:
    model = sub.add_parser("model", help="tiny offline model + tokenizer")
    msub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    init = msub.add_parser("init", help="train a BPE tokenizer on a world and build a tiny Qwen2 model")
    init.add_argument("--preset", choices=["smoke", "small"], default="small")
    init.add_argument("--world", required=True, help="world folder (corpus.jsonl, qa/)")
    init.add_argument("--out", required=True, help="output model folder")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=_model_init)

    demos = sub.add_parser("demos", help="write a matched narrow/diverse demonstration set")
    demos.add_argument("--world", required=True, help="world folder")
    demos.add_argument("--kind", choices=["diverse", "narrow"], required=True)
    demos.add_argument("-n", type=int, default=200, help="number of episodes")
    demos.add_argument("--out", required=True, help="output JSONL")
    demos.add_argument("--split", default="train")
    demos.add_argument("--seed", type=int, default=0)
    demos.add_argument("--index", choices=["dense", "bm25"], default="dense", help="retriever kind")
    demos.add_argument("--max-turns", type=int, default=4)
    demos.add_argument("--tokenizer", default=None, help="model folder whose tokenizer counts tokens")
    demos.set_defaults(func=_demos)

    ev = sub.add_parser("eval", help="evaluate a policy on an env; one JSONL record per episode")
    ev.add_argument("--policy", required=True, help="model folder | scripted:NAME | random")
    ev.add_argument("--env", required=True, help="env id, e.g. searchgym/MultiHop-v0")
    ev.add_argument("--split", default="test")
    ev.add_argument("-n", type=int, default=100, help="number of questions")
    ev.add_argument("--samples", type=int, default=1, help="episodes per question")
    ev.add_argument("--out", default=None, help="JSONL output")
    ev.add_argument("--world", default=None, help="world folder (default: the env's preset world)")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_eval)


def _model_init(args: argparse.Namespace) -> int:
    from searchgym.agents.model import init_model

    summary = init_model(args.preset, args.out, world_dir=args.world, seed=args.seed)
    print(f"model: {args.out}  preset={summary['preset']}  parameters={summary['parameters']:,}  "
          f"vocab={summary['vocab_size']}")
    return 0


def _demos(args: argparse.Namespace) -> int:
    from searchgym.agents.demos import DemoConfig, build_matched, format_summary, summarize_pair, write_demos

    cfg = DemoConfig(kind=args.kind, n=args.n, split=args.split, seed=args.seed, index_kind=args.index,
                     max_turns=args.max_turns)
    tok = None
    if args.tokenizer:
        from searchgym.agents.model import load_model

        tok = load_model(args.tokenizer)[1]
    sets = build_matched(args.world, cfg.n, split=cfg.split, seed=cfg.seed, index_kind=cfg.index_kind,
                         max_turns=cfg.max_turns, tokenizer=tok)
    write_demos(sets[cfg.kind], args.out)
    print(format_summary(summarize_pair(sets)))
    print(f"wrote {len(sets[cfg.kind])} {cfg.kind} demonstrations to {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from searchgym.agents.policy import evaluate, make_policy
    from searchgym.agents.rollout import RolloutConfig

    if args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")
    greedy = args.temperature <= 0
    cfg = RolloutConfig(greedy=greedy, temperature=1.0 if greedy else args.temperature,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, max_batch_size=args.batch_size)
    policy = make_policy(args.policy, cfg, seed=args.seed)
    kw = {"world_dir": args.world} if args.world else {}
    _, summary = evaluate(policy, args.env, split=args.split, num_questions=args.n, n=args.samples,
                          batch_size=args.batch_size, out=args.out, env_kwargs=kw)
    print(json.dumps(summary))
    print(f"accuracy {summary['accuracy']:.3f}  format-error rate {summary['format_error_rate']:.3f}  "
          f"searches/episode {summary['searches_per_episode']:.2f}  ({summary['episodes']} episodes)")
    return 0
