"""The projection stage, read-only over results: from a measured step to what a whole training run costs, what a
budget buys (:mod:`~flopsweep.projection.training`), and what one device holds and computes under a parallel layout
(:mod:`~flopsweep.projection.parallel`)."""
