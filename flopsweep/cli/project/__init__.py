"""flopsweep-project: what a measured (or counted) model costs, one subcommand a question.

    flopsweep-project train RUN --tokens 2T --gpu H100 --gpus 512 --mfu 0.4      a training run's cost
    flopsweep-project budget --model llama2_7b --usd 1M --gpus 256 --mfu 0.4 --price 2.5
                                                                                what a budget buys
    flopsweep-project serve --model llama3_1_8b --prompt-tokens 1024 --new-tokens 256 --gpu H100
                                                                                a generation's roofline

RUN is a measured job's folder or its MLflow run id (a job skip_existing=true skipped: the run it found measured);
--model PRESET counts a preset on meta instead.
flopsweep-project SUBCOMMAND --help lists each one's flags.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

from flopsweep.cli.parser import OneLineParser
from flopsweep.cli.project import budget, serve, train
from flopsweep.core.console import error, run_command
from flopsweep.core.errors import ConfigError, nearest
from flopsweep.core.result import RUN_ID  # a RUN of the old spelling, without its subcommand
from flopsweep.core.text import plain

SUBCOMMANDS = (train, budget, serve)  # each module: register(subparsers) and command(args); layout joins here
NAMES = tuple(module.__name__.rsplit(".", 1)[1] for module in SUBCOMMANDS)


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser, and each subcommand's by name."""
    p = OneLineParser(prog="flopsweep-project", description=plain(__doc__))
    subparsers = p.add_subparsers(title="subcommands", dest="subcommand", metavar="SUBCOMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return p, subparsers.choices


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    word = argv[0] if argv and not argv[0].startswith("-") and argv[0] not in NAMES else None
    if word is not None and not Path(word).exists() and not RUN_ID.fullmatch(word):  # no old spelling's RUN either
        meant = nearest(word, NAMES)
        error(f"{word!r} is not a subcommand{f' (did you mean {meant}?)' if meant else ''}: {', '.join(NAMES)}",
              "flopsweep-project")
        return 2
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
        # prefixed as argparse's refusals of the subcommand's flags are (it said flopsweep-project: for these)
        error(_naming_the_flag(err, subcommands[args.subcommand]), f"flopsweep-project {args.subcommand}")
        return 2


# config keys a preset is counted with (--model), as the flags that set them
CONFIG_FLAGS = {"batch.seq_len": "seq_len", "batch.size": "batch", "parallel.dp": "dp", "parallel.tp": "tp",
                "parallel.pp": "pp", "parallel.zero": "zero"}


def _naming_the_flag(err: ConfigError, parser: argparse.ArgumentParser) -> str:
    """``err`` in one line naming the flag its key stands for, as typed (``tp=3`` and a counted preset's
    ``parallel.tp=3`` are ``--tp=3``, ``inference=True`` is ``--inference``), where ``parser`` takes that flag;
    else as it is (``run=...``, a plan, a file's field)."""
    flag = "--" + CONFIG_FLAGS.get(err.key, err.key).replace("_", "-")
    if not _takes(parser, flag):
        return str(err)
    return f"{flag}: {err.problem}" if err.value is None or isinstance(err.value, bool) else \
        f"{flag}={err.value!r}: {err.problem}"


def _takes(parser: argparse.ArgumentParser, flag: str) -> bool:
    """Whether ``parser``'s usage line lists ``flag``: ``[--flag VALUE]`` or ``[--flag]``."""
    return re.search(rf"\[{re.escape(flag)}[\] ]", parser.format_usage()) is not None


def _refuse(subcommands: dict[str, argparse.ArgumentParser], subcommand: str, extra: list[str]) -> None:
    """One line naming the first flag ``subcommand`` does not take, and the subcommands that do."""
    chosen = subcommands[subcommand]
    flag = next((token.split("=", 1)[0] for token in extra if token.startswith("-")), None)
    if flag is None:
        chosen.error(f"unexpected {' '.join(extra)}")
    owners = [name for name, sub in subcommands.items() if _takes(sub, flag)]
    if owners:
        chosen.error(f"{flag} does not apply to {subcommand}: it is a flag of {' and '.join(owners)}")
    near = nearest(flag, re.findall(r"\[(--[\w-]+)", chosen.format_usage()))  # a typo: --token for --tokens
    chosen.error(f"{flag} is not a flag of {subcommand}" + (f" (did you mean {near}?)" if near else ""))


def entry() -> None:
    run_command(main)
