"""Validation internals: the versioned suites and their outcomes (``suites``) and the GX context that runs them and
builds the Data Docs (``gx``). The job itself is :mod:`jobs.validation.job`."""
