"""flopsweep's sweeper where Hydra looks for it: Hydra instantiates sweepers and launchers only from the
``hydra_plugins`` package. The code is in :mod:`flopsweep.sweep.sweeper`, the config in ``conf/hydra/sweeper/``."""

from flopsweep.sweep.sweeper import RecoveringSweeper as _RecoveringSweeper


class RecoveringSweeper(_RecoveringSweeper):
    __doc__ = _RecoveringSweeper.__doc__
