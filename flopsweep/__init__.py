"""flopsweep: what does this model cost? FLOPs, size, memory and timings of many configurations at once.

    flopsweep.load_runs(experiment=...)     # logged runs as a pandas DataFrame
    flopsweep.meter(model, optimizer)       # measure a step of your own training loop
    @flopsweep.formula(torch.ops.mylib.op)  # the FLOPs of an op of your own
    flopsweep.analysis.compare(df, baseline=...)     # runs side by side (flopsweep.projection: costs, layouts)
"""

from flopsweep.core import __version__

__all__ = ["__version__", "load_runs", "meter", "formula", "OpCost", "analysis", "projection"]


def __getattr__(name: str):
    # each imported on first use: load_runs brings in MLflow and pandas, the others torch
    if name in ("analysis", "projection"):  # flopsweep.analysis.compare, flopsweep.projection.parallel.per_device
        import importlib

        return importlib.import_module(f"flopsweep.{name}")
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
