"""Errors that tell the user which field is wrong and how to fix it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad value in a config, a request or a file.

    ``field`` names what is wrong (a config field, a JSON key, a file); ``fix`` says what to do.
    It subclasses ``ValueError`` so callers that only know the standard library still catch it.
    """

    def __init__(self, field: str, fix: str, problem: str | None = None):
        self.field = field
        self.fix = fix
        self.problem = problem
        message = f"{field}: {problem}. {fix}" if problem else f"{field}: {fix}"
        super().__init__(message)
