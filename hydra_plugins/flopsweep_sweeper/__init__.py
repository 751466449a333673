"""flopsweep's sweepers where Hydra looks for them: Hydra instantiates sweepers and launchers only from the
``hydra_plugins`` package. The code is in :mod:`flopsweep.sweep.sweeper` (and :mod:`flopsweep.sweep.layouts`, the
layout search of ``+sweep=layouts``), the config in ``conf/hydra/sweeper/`` (and ``sweeps/layouts.yaml``)."""

from flopsweep.sweep.layouts import LayoutSweeper as _LayoutSweeper
from flopsweep.sweep.sweeper import RecoveringSweeper as _RecoveringSweeper


class RecoveringSweeper(_RecoveringSweeper):
    __doc__ = _RecoveringSweeper.__doc__


class LayoutSweeper(_LayoutSweeper):
    __doc__ = _LayoutSweeper.__doc__
