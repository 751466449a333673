"""``flopsweep``: measure one configuration, or sweep many (``-m``, ``+sweep=NAME``): Hydra's command line, run by
:func:`flopsweep.sweep.app.main`."""

from __future__ import annotations

from flopsweep.core.console import exit_command


def entry() -> None:
    from flopsweep.sweep.app import main

    exit_command(main())


if __name__ == "__main__":
    entry()
