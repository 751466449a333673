"""flopsweep: what does this model cost? FLOPs, size, memory and timings of many configurations at once."""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_runs":  # imported on use: it brings in MLflow and pandas
        from flopsweep.tracking import load_runs
        return load_runs
    if name == "measure":  # flopsweep.measure(model, optimizer): the measure package is callable
        import importlib
        return importlib.import_module("flopsweep.measure")
    raise AttributeError(name)
