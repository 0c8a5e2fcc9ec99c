"""Errors that the CLI turns into one line on stderr and exit code 2."""
from __future__ import annotations


class SynrefError(Exception):
    """Base class for every error synref raises on purpose."""


class InputError(SynrefError, ValueError):
    """Bad user input: a path, a label file, an option value.

    The message is one line and names the offending file, sample or option.
    """


class MissingDependencyError(SynrefError, ImportError):
    """An optional extra is needed; the message says which one to install."""


def one_line(exc: BaseException) -> str:
    """``"<ExceptionType>: <message on one line>"`` (just the type when there is no message): a
    third-party exception folded into one of synref's one-line messages."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
