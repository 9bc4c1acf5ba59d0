"""``searchgym train sft|rl`` and ``searchgym export verl``.

``train rl --backend verl`` hands off to :mod:`searchgym.training.verl_cli` (Ray/verl launch);
the default ``--backend embedded`` runs the in-process trainer of :mod:`searchgym.training.rl`.
"""

from __future__ import annotations

import argparse
import importlib


def _verl_cli():
    try:
        return importlib.import_module("searchgym.training.verl_cli")
    except ModuleNotFoundError as exc:
        if exc.name == "searchgym.training.verl_cli":
            return None
        raise


def add_commands(subparsers) -> None:
    train = subparsers.add_parser("train", help="SFT warm starts and RL training")
    tsub = train.add_subparsers(dest="train_command", metavar="{sft,rl}", required=True)

    sft = tsub.add_parser("sft", help="supervised warm start on demonstrations (loss on policy tokens only)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sft.add_argument("--model", required=True, help="HF model folder to start from (e.g. from `searchgym model init`)")
    sft.add_argument("--demos", required=True, help="demonstration JSONL (`searchgym demos`)")
    sft.add_argument("--out", required=True, help="output folder; the model goes to OUT/model")
    sft.add_argument("--world", default="", help="world folder for validation (default: the envs' default world)")
    sft.add_argument("--config", default=None, help="YAML with SFTConfig fields (strict)")
    sft.add_argument("--preset", default="small", choices=("smoke", "small"), help="base settings")
    sft.add_argument("--epochs", type=int, default=None)
    sft.add_argument("--max-steps", type=int, default=None)
    sft.add_argument("--seed", type=int, default=None)
    sft.add_argument("--threads", type=int, default=None, help="torch threads (0 = default)")
    sft.add_argument("--no-progress", action="store_true", help="no progress bar")
    sft.set_defaults(func=_run_sft)

    rl = tsub.add_parser("rl", help="RL on the search envs with an entropy-preserving objective",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rl.add_argument("--backend", default="embedded", choices=("embedded", "verl"),
                    help="embedded: in-process trainer on CPU; verl: launch verl.trainer.main_ppo on Ray")
    rl.add_argument("--init", default=None, help="model folder to start from (an SFT warm start)")
    rl.add_argument("--objective", default=None, help="objective name (see --list-objectives)")
    rl.add_argument("--config", default=None, help="YAML with RLConfig fields (strict)")
    rl.add_argument("--out", default=None, help="run folder (metrics.jsonl, tensorboard/, checkpoints/, model/)")
    rl.add_argument("--preset", default="small", choices=("smoke", "small"), help="base settings (embedded)")
    rl.add_argument("--world", default=None, help="world folder (default: the one the warm start recorded)")
    rl.add_argument("--steps", type=int, default=None)
    rl.add_argument("--seed", type=int, default=None)
    rl.add_argument("--threads", type=int, default=None, help="torch threads (0 = default)")
    rl.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    rl.add_argument("--list-objectives", action="store_true", help="print the objective registry and exit")
    rl.add_argument("--no-progress", action="store_true", help="no progress bar")
    vc = _verl_cli()
    if vc is not None:
        vc.add_backend_arguments(rl)
    rl.set_defaults(func=_run_rl)

    if vc is not None:
        vc.add_export_command(subparsers)


def _run_sft(args) -> int:
    from searchgym.training.config import SFTConfig, _merge, SFT_PRESETS, dataclass_from_dict, load_yaml_config
    from searchgym.training.sft import train_sft

    base = dict(SFT_PRESETS[args.preset])
    if args.config:
        load_yaml_config(SFTConfig, args.config, prefix="sft")  # strict check, naming file and key
        base = _merge(base, _yaml_data(args.config))
    over = {"model": args.model, "demos": args.demos, "out": args.out, "world": args.world}
    for k in ("epochs", "max_steps", "seed", "threads"):
        if getattr(args, k) is not None:
            over[k] = getattr(args, k)
    cfg = dataclass_from_dict(SFTConfig, _merge(base, over), prefix="sft")
    path = train_sft(cfg, progress=not args.no_progress)
    from searchgym.training.common import read_train_info

    info = read_train_info(path)
    print(f"model: {path}")
    print(f"validation accuracy ({info.get('val_family')}): {info.get('val_accuracy'):.3f}  "
          f"steps: {info.get('steps')}  wall time: {info.get('wall_time_s'):.0f}s")
    return 0


def _yaml_data(path) -> dict:
    """The mapping of a YAML config already checked by ``load_yaml_config``. Merged as
    written (not via the dataclass) so a nested section that gives some keys keeps the
    preset's values for the others: ``optim: {lr: 0.1}`` leaves the preset's warmup alone."""
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _run_rl(args) -> int:
    if args.list_objectives:
        from searchgym.training.objectives import OBJECTIVES
        import dataclasses

        for name, cls in OBJECTIVES.items():
            d = {f.name: getattr(cls.Config(), f.name) for f in dataclasses.fields(cls.Config)}
            print(f"{name:15s} {cls.description}\n{'':15s} defaults: {d}")
        return 0
    if args.backend == "verl":
        vc = _verl_cli()
        if vc is None:
            raise ValueError("the verl backend is not available in this installation")
        return int(vc.run_verl(args) or 0)

    from searchgym.training.config import RL_PRESETS, RLConfig, _merge, dataclass_from_dict, load_yaml_config
    from searchgym.training.rl import train_rl

    base = dict(RL_PRESETS[args.preset])
    if args.config:
        load_yaml_config(RLConfig, args.config, prefix="rl")  # strict check, naming file and key
        base = _merge(base, _yaml_data(args.config))
    over = {}
    for k in ("init", "objective", "out", "world", "steps", "seed", "threads"):
        if getattr(args, k, None) is not None:
            over[k] = getattr(args, k)
    cfg = dataclass_from_dict(RLConfig, _merge(base, over), prefix="rl")
    if not cfg.init or not cfg.out:
        raise ValueError("train rl needs --init and --out (or init/out in --config)")
    path = train_rl(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"model: {path}")
    print(f"metrics: {cfg.out}/metrics.jsonl")
    return 0
