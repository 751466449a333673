"""The run stage: one job from a validated spec to a result (:mod:`~flopsweep.run.job`), whether it fits in memory
and the largest batch that does (:mod:`~flopsweep.run.fit`), the result assembled (:mod:`~flopsweep.run.assemble`),
a step of the user's own loop measured (:mod:`~flopsweep.run.meter`), and presets counted for projections."""
