"""The build stage: the validated job (:class:`~flopsweep.build.spec.JobSpec`), the model on its device and dtype
with its train mode applied, its synthetic batch, and its optimizer; train modes and optimizers are registries."""
