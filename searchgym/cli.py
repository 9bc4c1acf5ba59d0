"""The ``searchgym`` command.

Each concern contributes its own subcommands through ``add_commands(subparsers)`` in its
``cli`` module; this file only composes them. Handlers import heavy libraries lazily so
``searchgym --help`` stays fast.

User errors (bad paths, malformed files, wrong configs) surface as ``ValueError`` or
``OSError`` subclasses with a message naming the problem; they are printed as one line
and exit with status 2. Set ``SEARCHGYM_DEBUG=1`` to see the traceback.

Outputs: every command that writes ``--out`` is listed in :data:`OUTPUTS` with the marker
that makes a path its own output. Before the handler runs, an existing ``--out`` that is
not empty and lacks the marker is refused in one line (nothing is touched); ``--force``
(added to each of these commands) overrides. SIGTERM exits through the handlers' cleanup
(temp folders of an interrupted build are removed), status 143.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Order is the order of `searchgym --help`.
_COMMAND_MODULES = (
    "searchgym.retrieval.cli",  # index, serve
    "searchgym.envs.cli",  # world, envs
    "searchgym.agents.cli",  # model, demos, eval
    "searchgym.training.cli",  # train, export
    "searchgym.metrics.cli",  # diversity
    "searchgym.experiment_cli",  # run, report, merge, compare
)


def _has(path: Path, *names: str) -> bool:
    return any((path / n).exists() for n in names)


def _is_model_init(p: Path) -> bool:
    return (p / "searchgym_model.json").is_file()


def _is_sft_run(p: Path) -> bool:
    return _has(p, "sft_log.jsonl", "model/searchgym_train.json")


def _is_rl_run(p: Path) -> bool:
    from searchgym.retrieval.fileio import json_marker

    return json_marker(p / "config.json", rl=...) or _has(p, "metrics.jsonl", "verl_config.yaml", "checkpoints")


def _is_experiment_run(p: Path) -> bool:
    return _has(p, "cache", ".lock", "report.json", "arms")


def _is_merge(p: Path) -> bool:
    return (p / "merge.json").is_file()


def _is_replication_file(p: Path) -> bool:
    from searchgym.compare import is_replication_file

    return is_replication_file(p)


def _is_contrast_file(p: Path) -> bool:
    from searchgym.contrast import is_contrast_file

    return is_contrast_file(p)


def _is_demos_file(p: Path) -> bool:
    from searchgym.retrieval.fileio import first_jsonl_record

    rec = first_jsonl_record(p)
    return rec is not None and {"question_id", "kind", "turns"} <= set(rec)


def _is_eval_file(p: Path) -> bool:
    from searchgym.retrieval.fileio import first_jsonl_record

    rec = first_jsonl_record(p)
    return rec is not None and {"question_id", "transcript", "correct"} <= set(rec)


def _is_verl_export(p: Path) -> bool:
    from searchgym.training.verl_data import is_export_parquet

    return is_export_parquet(p)


def _is_index(p: Path) -> bool:
    from searchgym.retrieval.index import is_index_dir

    return is_index_dir(p)


def _is_world(p: Path) -> bool:
    from searchgym.envs.world import is_world_dir

    return is_world_dir(p)


@dataclass(frozen=True)
class OutputRule:
    """What a command writes at ``--out`` and how to recognise its own earlier output."""

    kind: str  # "dir" | "file"
    is_own: Callable[[Path], bool]
    what: str  # the marker, as printed in the refusal


OUTPUTS: dict[tuple[str, ...], OutputRule] = {
    ("index", "build"): OutputRule("dir", _is_index, "an index folder (manifest.json with format 'searchgym-index')"),
    ("index", "import"): OutputRule("dir", _is_index, "an index folder (manifest.json with format 'searchgym-index')"),
    ("world",): OutputRule("dir", _is_world, "a searchgym world (manifest.json with format 'searchgym-world')"),
    ("model", "init"): OutputRule("dir", _is_model_init, "a `model init` folder (searchgym_model.json)"),
    ("demos",): OutputRule("file", _is_demos_file, "a demonstrations JSONL (`searchgym demos` records)"),
    ("eval",): OutputRule("file", _is_eval_file, "an eval JSONL (`searchgym eval` records)"),
    ("train", "sft"): OutputRule("dir", _is_sft_run, "a `train sft` folder (sft_log.jsonl or model/searchgym_train.json)"),
    ("train", "rl"): OutputRule("dir", _is_rl_run,
                                "a `train rl` run folder (config.json of a run, metrics.jsonl, checkpoints/ or verl_config.yaml)"),
    ("export", "verl"): OutputRule("file", _is_verl_export, "a `searchgym export verl` parquet"),
    ("run",): OutputRule("dir", _is_experiment_run, "a `searchgym run` folder (cache/, arms/, report.json or .lock)"),
    ("merge",): OutputRule("dir", _is_merge, "a `searchgym merge` folder (merge.json)"),
    ("compare",): OutputRule("file", _is_replication_file,
                             "a `searchgym compare` markdown file (its first line is the generated marker)"),
    ("contrast",): OutputRule("file", _is_contrast_file,
                              "a `searchgym contrast` markdown file (its first line is the generated marker)"),
}

_SUBCOMMAND_DESTS = ("index_command", "world_command", "model_command", "train_command", "export_format",
                     "task_command", "envs_command")


def command_key(args: argparse.Namespace) -> tuple[str, ...]:
    """The command words of parsed ``args``, e.g. ``("index", "build")``."""
    words = [args.command]
    for dest in _SUBCOMMAND_DESTS:
        value = getattr(args, dest, None)
        if value:
            words.append(value)
    return tuple(words)


def _yaml_out(config_path: str | None) -> str | None:
    if not config_path:
        return None
    try:
        import yaml

        with open(config_path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except Exception:  # the command itself reports a bad config, naming the key
        return None
    out = data.get("out") if isinstance(data, dict) else None
    return out if isinstance(out, str) and out else None


def output_path(key: tuple[str, ...], args: argparse.Namespace) -> str | None:
    """The path ``args`` will write for command ``key`` (``--out``, else the value from
    ``--config``, else the command's default), or None when it writes none."""
    out = getattr(args, "out", None)
    if out:
        return out
    if key in (("train", "sft"), ("train", "rl")):
        out = _yaml_out(getattr(args, "config", None))
        if out:
            return out
        if key == ("train", "rl") and getattr(args, "backend", "") == "verl" and not getattr(args, "list_objectives", False):
            return f"runs/verl-{getattr(args, 'objective', None) or 'grpo'}"
    if key == ("run",):
        return f"runs/{args.preset}"
    return None


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse (``ForeignOutputError``) to let the command replace what it did not write."""
    from searchgym.retrieval.fileio import check_output

    key = command_key(args)
    rule = OUTPUTS.get(key)
    if rule is None:
        return
    out = output_path(key, args)
    if out:
        check_output(out, rule.is_own, rule.what, kind=rule.kind, force=bool(getattr(args, "force", False)))


def _subparser(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> argparse.ArgumentParser | None:
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            return None
        parser = subs[0].choices[word]
    return parser


def _add_force_flags(parser: argparse.ArgumentParser) -> None:
    for words, rule in OUTPUTS.items():
        p = _subparser(parser, words)
        if p is not None and "--force" not in p._option_string_actions:
            verb = "overwrite" if rule.kind == "file" else "replace"
            p.add_argument("--force", action="store_true",
                           help=f"{verb} --out even if it is not {rule.what}")


def _raise_on_sigterm(signum, frame):
    # SystemExit unwinds through `finally` blocks: atomic writers delete their temp folders.
    raise SystemExit(128 + signum)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="searchgym",
        description="Multi-turn search environments, RL trainer and diversity metrics.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a concern not built yet
            if exc.name == name:
                continue
            raise
        module.add_commands(sub)
    _add_force_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        check_outputs(args)
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        if os.environ.get("SEARCHGYM_DEBUG"):
            raise
        print(f"searchgym {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
