"""Exceptions that mark bad user input.

The CLI turns a :class:`ConfigError` into one line on stderr and exit code 2, before any
file of a run is written. Library code raises it for anything the user can fix in the
recipe, on the command line or in the data; internal invariants use ``assert``.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input (recipe key, value, name, path or data) that the user can fix.

    Args:
        message: what is wrong, naming the key, value or file and what would be valid.
        key: the dotted recipe key at fault, when there is one (``model.arch``); it prefixes
            the message.
    """

    def __init__(self, message: str, key: str | None = None):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)

    def with_key(self, key: str) -> "ConfigError":
        """The same error attributed to a recipe key (kept if it already has one)."""
        if self.key:
            return self
        return ConfigError(str(self), key=key)


class TrainingFailed(RuntimeError):
    """A run that started and could not go on (e.g. diverged to NaN): exit code 1, one message."""
