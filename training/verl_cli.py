"""CLI wiring of the verl backend (import-light: verl and the envs load only in handlers).

Used by ``searchgym.training.cli``:

- :func:`add_export_command` adds ``searchgym export verl --env ID --split train --out FILE``
  to the top-level subparsers;
- :func:`add_backend_arguments` adds the verl-only flags of ``searchgym train rl --backend
  verl`` (the training parser owns ``--objective``, ``--config``, ``--out``, ``--backend``);
- :func:`run_verl` is the handler that prepares (and unless ``--dry-run``, runs) verl.
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_ENV = "searchgym/MultiHop-v0"


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value); VALUE parsed as JSON when it parses, else kept as text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    key, raw = text.split("=", 1)
    if not key:
        raise argparse.ArgumentTypeError(f"{text!r} has an empty key")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _hydra_override(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"--set {text!r} is not KEY=VALUE (a Hydra override)")
    return text


# ------------------------------------------------------------------------------ export


def add_export_command(subparsers) -> None:
    """Add ``export`` (with its ``verl`` subcommand) to the top-level subparsers."""
    export = subparsers.add_parser("export", help="export env splits for other trainers")
    sub = export.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    p = sub.add_parser(
        "verl",
        help="write an env split as verl's RL parquet",
        description="Write questions of an env split as verl's RL dataset (data_source, prompt, "
        "reward_model.ground_truth, extra_info with env id/split/index, agent_name).",
    )
    p.add_argument("--env", default=DEFAULT_ENV, help=f"registered env id (default {DEFAULT_ENV})")
    p.add_argument("--split", default="train", help="train | validation | test (default train)")
    p.add_argument("--out", required=True, help="output FILE.parquet (written atomically)")
    p.add_argument("--limit", type=int, default=None, help="export only the first N questions")
    p.add_argument("--env-kwarg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="extra searchgym.envs.make kwarg (repeatable; VALUE parsed as JSON if it parses)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from searchgym.training.verl_data import export_parquet

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    out = export_parquet(args.env, args.out, split=args.split, limit=args.limit, env_kwargs=dict(args.env_kwarg),
                         force=getattr(args, "force", False))
    import pyarrow.parquet as pq

    n = pq.ParquetFile(out).metadata.num_rows
    print(f"wrote {n} rows of {args.env} [{args.split}] to {out}")
    return 0


# ------------------------------------------------------------------------------ train rl


def add_backend_arguments(rl_parser: argparse.ArgumentParser) -> None:
    """Add the flags used only by ``train rl --backend verl``, in their own group."""
    g = rl_parser.add_argument_group("verl backend (--backend verl)")
    g.add_argument("--model", default=None, help="HF model directory or id for the actor (verl backend)")
    g.add_argument("--env", default=DEFAULT_ENV, help=f"registered env id (default {DEFAULT_ENV})")
    g.add_argument("--env-kwarg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="extra searchgym.envs.make kwarg for export and the agent loop (repeatable)")
    g.add_argument("--train-files", nargs="+", default=[], metavar="PARQUET",
                   help="verl RL parquet(s); default: export --env's train split into OUT/data")
    g.add_argument("--val-files", nargs="+", default=[], metavar="PARQUET",
                   help="validation parquet(s); default: export --env's --val-split")
    g.add_argument("--val-split", default="validation", help="split exported for validation")
    g.add_argument("--export-limit", type=int, default=None, help="export only the first N questions per split")
    g.add_argument("--retriever-url", default=None,
                   help="searchgym serve URL shared by every env of a worker (default: each env loads its index)")
    g.add_argument("--max-turns", type=int, default=None, help="cap on assistant turns per episode")
    g.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    g.add_argument("--n-gpus", type=int, default=1, help="GPUs per node (default 1)")
    g.add_argument("--nnodes", type=int, default=1, help="nodes (default 1)")
    g.add_argument("--rollout-engine", default="vllm", choices=("vllm", "sglang", "trtllm"))
    g.add_argument("--tp", type=int, default=1, help="rollout tensor-parallel size")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    g.add_argument("--train-batch-size", type=int, default=64, help="prompts per step")
    g.add_argument("--rollout-n", type=int, default=5, help="samples per prompt (GRPO group)")
    g.add_argument("--ppo-mini-batch-size", type=int, default=32)
    g.add_argument("--micro-batch-size", type=int, default=4, help="per-GPU micro-batch")
    g.add_argument("--max-prompt-length", type=int, default=512)
    g.add_argument("--max-response-length", type=int, default=1024,
                   help="tokens for all turns of an episode, observations included")
    g.add_argument("--actor-lr", type=float, default=1e-6)
    g.add_argument("--kl-loss-coef", type=float, default=0.001, help="low_var_kl loss coefficient (0 = off)")
    g.add_argument("--total-epochs", type=int, default=1)
    g.add_argument("--total-steps", type=int, default=None)
    g.add_argument("--objective-set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the objective's config (e.g. rho=0.1)")
    g.add_argument("--set", dest="verl_set", type=_hydra_override, action="append", default=[],
                   metavar="KEY=VALUE", help="extra Hydra override for verl's ppo_trainer (repeatable, last wins)")
    g.add_argument("--data-source", dest="data_source_map", type=_key_value, action="append", default=[],
                   metavar="NAME=ENV_ID", help="serve rows whose data_source is NAME (a Search-R1 parquet as it is) "
                   "with env ENV_ID (repeatable; default: the task listing NAME in its data_sources)")
    g.add_argument("--dry-run", action="store_true",
                   help="check the rows, compose + validate + write the config and print the command; do not run it")


def _objective_overrides_from_config(path) -> dict:
    """Objective overrides from the training YAML (``--config``), if one was given."""
    if not path:
        return {}
    from searchgym.training.config import RLConfig, load_yaml_config

    cfg = load_yaml_config(RLConfig, path)
    return dict(cfg.objective_overrides or {})


def run_verl(args) -> int:
    """Handler of ``train rl --backend verl``: prepare, validate, then run or print."""
    from searchgym.training.verl_launch import VerlLaunchConfig, launch, prepare_launch

    objective = getattr(args, "objective", None) or "grpo"
    obj_over = _objective_overrides_from_config(getattr(args, "config", None))
    obj_over.update(dict(args.objective_set))
    out = getattr(args, "out", None) or f"runs/verl-{objective}"
    cfg = VerlLaunchConfig(
        objective=objective,
        model=args.model or getattr(args, "init", None) or "",
        env_id=args.env,
        out_dir=str(out),
        objective_overrides=obj_over,
        train_files=list(args.train_files),
        val_files=list(args.val_files),
        val_split=args.val_split,
        export_limit=args.export_limit,
        env_kwargs=dict(args.env_kwarg),
        retriever_url=args.retriever_url,
        max_turns=args.max_turns,
        n_gpus=args.n_gpus,
        nnodes=args.nnodes,
        ray_address=args.ray_address,
        rollout=args.rollout_engine,
        tensor_parallel=args.tp,
        gpu_memory_utilization=args.gpu_memory_utilization,
        train_batch_size=args.train_batch_size,
        rollout_n=args.rollout_n,
        ppo_mini_batch_size=args.ppo_mini_batch_size,
        micro_batch_size_per_gpu=args.micro_batch_size,
        max_prompt_length=args.max_prompt_length,
        max_response_length=args.max_response_length,
        lr=args.actor_lr,
        kl_loss_coef=args.kl_loss_coef,
        total_epochs=args.total_epochs,
        total_training_steps=args.total_steps,
        extra_overrides=list(args.verl_set),
        data_source_map={str(k): str(v) for k, v in args.data_source_map},
        force=bool(getattr(args, "force", False)),
    )
    plan = prepare_launch(cfg)
    print(f"verl config (validated): {plan.config_file}")
    print(plan.shell())
    sys.stdout.flush()
    if args.dry_run:
        return 0
    return launch(plan)
