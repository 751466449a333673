"""The measure stage (counting, sizes, timings, the module profile), and ``flopsweep.measure(model, optimizer)``
for a step of your own training loop: this package is callable, see :mod:`flopsweep.loop`."""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, model, optimizer=None, **options):
        """``flopsweep.measure(model, optimizer, batch_size=..., seq_len=...)``: a :class:`flopsweep.loop.Measurement`."""
        from flopsweep.loop import Measurement

        return Measurement(model, optimizer, **options)


sys.modules[__name__].__class__ = _CallablePackage
