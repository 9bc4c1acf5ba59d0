"""The ``searchgym`` command.

Each concern contributes its own subcommands through ``add_commands(subparsers)`` in its
``cli`` module; this file only composes them. Handlers import heavy libraries lazily so
``searchgym --help`` stays fast.

User errors (bad paths, malformed files, wrong configs) surface as ``ValueError`` or
``OSError`` subclasses with a message naming the problem; they are printed as one line
and exit with status 2. Set ``SEARCHGYM_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order is the order of `searchgym --help`.
_COMMAND_MODULES = (
    "searchgym.retrieval.cli",  # index, serve
    "searchgym.envs.cli",  # world, envs
    "searchgym.agents.cli",  # model, demos, eval
    "searchgym.training.cli",  # train, export
    "searchgym.metrics.cli",  # diversity
    "searchgym.experiment_cli",  # run
)


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        if os.environ.get("SEARCHGYM_DEBUG"):
            raise
        print(f"searchgym {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
