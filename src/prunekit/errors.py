"""prunekit's exceptions.

Every failure a user can cause (bad path, bad argument, bad data) is raised as a
:class:`PrunekitError` subclass with one human sentence. The CLI prints that sentence and exits
non-zero; nothing else in prunekit prints tracebacks for user mistakes.
"""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_code = 2


class ModelLoadError(PrunekitError):
    """The model directory, hub id or GGUF file cannot be loaded."""


class UnsupportedArchitectureError(PrunekitError):
    """The model is not a causal LM of a family prunekit has an adapter for."""


class DataError(PrunekitError):
    """A corpus or data file is missing, empty or too short."""


class ArgumentError(PrunekitError):
    """An argument is out of range or contradicts another."""


class OutputExistsError(PrunekitError):
    """The output directory exists and ``--overwrite`` was not given."""


class NumericalError(PrunekitError):
    """A statistic or solve became non-finite and could not be repaired."""
