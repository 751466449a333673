"""flopsweep: what does this model cost? FLOPs, size, memory and timings of many configurations at once.

    flopsweep.load_runs(experiment=...)     # logged runs as a pandas DataFrame
    flopsweep.meter(model, optimizer)       # measure a step of your own training loop
    @flopsweep.formula(torch.ops.mylib.op)  # the FLOPs of an op of your own
"""

from flopsweep.core import __version__

__all__ = ["__version__", "load_runs", "meter", "formula", "OpCost"]


def __getattr__(name: str):
    # each imported on first use: load_runs brings in MLflow and pandas, the others torch
    if name == "load_runs":
        from flopsweep.sinks.reader import load_runs
        return load_runs
    if name == "meter":
        from flopsweep.run.meter import Meter
        return Meter
    if name in ("formula", "OpCost"):
        from flopsweep.measure import formulas
        return getattr(formulas, name)
    raise AttributeError(name)
