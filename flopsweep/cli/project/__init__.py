"""flopsweep-project: what a measured (or counted) model costs, one subcommand a question.

    flopsweep-project train RUN --tokens 2T --gpu H100 --gpus 512 --mfu 0.4      a training run's cost
    flopsweep-project budget --model llama2_7b --usd 1M --gpus 256 --mfu 0.4 --price 2.5
                                                                                what a budget buys
    flopsweep-project serve --model llama3_1_8b --prompt-tokens 1024 --new-tokens 256 --gpu H100
                                                                                a generation's roofline

RUN is a measured job's folder or its MLflow run id; --model PRESET counts a preset on meta instead.
flopsweep-project SUBCOMMAND --help lists each one's flags.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Optional

from flopsweep.cli.project import budget, serve, train
from flopsweep.cli.project.arguments import OneLineParser
from flopsweep.core.console import exit_command
from flopsweep.core.errors import ConfigError
from flopsweep.core.text import plain

SUBCOMMANDS = (train, budget, serve)  # each module: register(subparsers) and command(args); layout joins here
NAMES = tuple(module.__name__.rsplit(".", 1)[1] for module in SUBCOMMANDS)


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser, and each subcommand's by name."""
    p = OneLineParser(prog="flopsweep-project", description=plain(__doc__),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = p.add_subparsers(title="subcommands", dest="subcommand", metavar="SUBCOMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return p, subparsers.choices


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in (*NAMES, "-h", "--help"):
        from flopsweep.cli.project.legacy import translate

        argv, note = translate(argv)
        print(note, file=sys.stderr)
    p, subcommands = parsers()
    args, extra = p.parse_known_args(argv)
    if args.subcommand is None:
        p.error(f"choose a subcommand: {', '.join(subcommands)}")
    if extra:
        _refuse(subcommands, args.subcommand, extra)
    try:
        return args.command(args)
    except ConfigError as err:
        print(f"flopsweep-project: error: {err}", file=sys.stderr)
        return 2


def _refuse(subcommands: dict[str, argparse.ArgumentParser], subcommand: str, extra: list[str]) -> None:
    """One line naming the first flag ``subcommand`` does not take, and the subcommands that do."""
    chosen = subcommands[subcommand]
    flag = next((token.split("=", 1)[0] for token in extra if token.startswith("-")), None)
    if flag is None:
        chosen.error(f"unexpected {' '.join(extra)}")
    taken = re.compile(rf"\[{re.escape(flag)}[\] ]")  # as a usage line lists it: [--flag VALUE] or [--flag]
    owners = [name for name, sub in subcommands.items() if taken.search(sub.format_usage())]
    chosen.error(f"{flag} does not apply to {subcommand}" + (f": it is a flag of {' and '.join(owners)}" if owners
                                                              else ""))


def entry() -> None:
    exit_command(main())
