"""The projection stage, read-only over results: from a measured step to what a whole training run costs, what a
budget buys (:mod:`~flopsweep.projection.training`), and what one device holds and computes under a parallel layout
(:mod:`~flopsweep.projection.parallel`)."""

MODULES = ("budget", "generation", "parallel", "records", "scaling", "serving", "training")


def __getattr__(name: str):
    """``flopsweep.projection.parallel`` and its siblings without importing each first, as the docs write them."""
    if name in MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)
