"""What every command's ``--help`` shares: its docstring's lines as written, and argparse's wrapped lines no wider
than the docstrings' 120 columns, however wide the terminal (argparse fills it: 158 columns in a 160-column one)."""

from __future__ import annotations

import argparse
import shutil

WIDTH = 120


class Help(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str, **kwargs) -> None:
        kwargs.setdefault("width", min(WIDTH, shutil.get_terminal_size().columns - 2))
        super().__init__(prog, **kwargs)
