"""Monitoring internals: drift statistics and rules (``stats``), the reference profile stored with each model
version (``profile``) and the HTML report (``report``). The job itself is :mod:`jobs.monitoring.job`."""
