"""Errors a user can act on. The CLI prints their message on one line and exits with ``exit_code``."""


class TaxiError(Exception):
    """Base class: a one-line, user-facing message; no traceback is shown."""

    exit_code = 1


class InputError(TaxiError):
    """Bad arguments or a bad input file (names the file, month and column where known)."""

    exit_code = 2


class MonthRejected(TaxiError):
    """Validation rejected a whole month; nothing was written downstream."""

    exit_code = 3


class MissingUpstream(TaxiError):
    """An earlier stage has not produced the data this job needs."""

    exit_code = 4


class WindowNotFilled(MissingUpstream):
    """A training window holds fewer than two feature months: no train/validation split yet (a later month fills
    it, so a scheduled loop reports it and goes on)."""


class ServiceUnavailable(TaxiError):
    """An external service (MLflow tracking server) could not be reached after retries."""

    exit_code = 5
