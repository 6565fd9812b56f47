"""sigkit's exceptions: user mistakes (exit 2, one line) versus bugs (traceback, exit 1)."""

from __future__ import annotations


class SigkitError(Exception):
    """A mistake the user can fix: bad recipe, unknown model, unreadable data, a plugin that raised.

    The CLI prints ``str(error)`` on one line and exits with code 2.  ``path``, ``line`` and ``column``
    (1-based) locate the problem when it has a place in a file.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        self.hint = hint

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = str(self.path)
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        text = where + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class RecipeError(SigkitError):
    """The recipe is malformed or names something that does not exist."""


class DurationError(SigkitError):
    """A duration without a unit, or with one sigkit does not know."""


class DataError(SigkitError):
    """Market data is missing, unreadable, corrupt or out of order."""


class PluginError(SigkitError):
    """A plugin failed to load, registered something twice, or declared an incompatible API."""


class ModelError(SigkitError):
    """A model refused its input or raised while running; names the model, hook and event time."""
