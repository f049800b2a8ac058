"""Errors that mean "the user asked for something we can't do": the entrypoint prints them as one
message (what was wrong, how to fix it) instead of a traceback."""


class GenlabError(Exception):
    """Base class: bad input, not a bug."""


class ConfigError(GenlabError):
    """A config key, value or file that does not exist or does not fit."""


class DataError(GenlabError):
    """A data set that is missing, empty or unreadable."""


class DivergenceError(GenlabError):
    """Training produced a non-finite loss or gradient and cannot go on (see genlab.faults.NaNGuard)."""
