"""What every command's parser shares: an error in one line, and a ``--help`` with its docstring's lines as written
and argparse's wrapped lines no wider than the docstrings' 120 columns, however wide the terminal (argparse fills
it: 158 columns in a 160-column one)."""

from __future__ import annotations

import argparse
import shutil

WIDTH = 120


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

    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
