"""Training internals: the distributed learners, the baselines and the MLflow artifacts of a run. The job
itself is :mod:`jobs.training.job`."""
