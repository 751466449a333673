"""The config stage: the schema Hydra composes against (:mod:`~flopsweep.config.schema`), composing a job's config
(:mod:`~flopsweep.config.compose`) and resolving it into a checked job (:mod:`~flopsweep.config.resolve`)."""
