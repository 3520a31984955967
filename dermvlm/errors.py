"""Errors a user can fix. The CLI prints these as one line; anything else is a bug."""


class DermvlmError(Exception):
    """Base for user-facing errors: the message says what was wrong and where."""


class ConfigError(DermvlmError):
    """An unknown preset, an unknown `--set` key, or a value of the wrong type."""


class DataError(DermvlmError):
    """Input data that cannot be read: which file, which row, which column, what was expected."""
