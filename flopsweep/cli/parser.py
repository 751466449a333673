"""What every command's parser shares: an error in one line, and a ``--help`` with its docstring's lines as written
and argparse's wrapped lines no wider than the docstrings' 120 columns, however wide the terminal (argparse fills
it: 158 columns in a 160-column one)."""

from __future__ import annotations

import argparse
import re
import shutil
import sys

WIDTH = 120
NEGATIVE = re.compile(r"-\.?\d")  # -5B, -1e3, -.5: a negative value, not a flag


class Help(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str, **kwargs) -> None:
        kwargs.setdefault("width", min(WIDTH, shutil.get_terminal_size().columns - 2))
        super().__init__(prog, **kwargs)


class OneLineParser(argparse.ArgumentParser):
    """A command's parser: its ``--help`` in :class:`Help`, an error in one line (not argparse's usage block above
    it), no abbreviated flags (budget's ``--tokens`` is not its ``--tokens-per-param``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", Help)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        # a negative number after its flag (--tokens -5B) was argparse's "expected one argument", taken for a flag:
        # joined to the flag (--tokens=-5B), the flag's type says what is wrong with it
        given = list(sys.argv[1:] if args is None else args)
        joined = []
        for arg in given:
            if joined and NEGATIVE.match(arg) and joined[-1].startswith("--") and "=" not in joined[-1]:
                joined[-1] = f"{joined[-1]}={arg}"
            else:
                joined.append(arg)
        return super().parse_known_args(joined, namespace)

    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
