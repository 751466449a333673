"""The sweep stage: the task that runs each job (:mod:`~flopsweep.sweep.app`), the sweep's callback, its plan,
the sweeper that survives dead workers, and the fast joblib path. A sweep's shared state is one object
(:mod:`~flopsweep.sweep.state`)."""
