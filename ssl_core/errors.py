"""Errors a user can fix: the command line prints one line and exits with code 2.

Every module raises its own subclass (``ConfigError``, ``CorpusError``, ``ModelError``,
``EvaluationError`` here; ``InputError``, ``ModelRefError`` in ``pipelines``), so callers can catch
one kind, and ``sslpipe`` catches them all as ``UserError``."""


class UserError(ValueError):
    """Bad input with a message that names the input and the fix."""
