"""The project's error types. User mistakes raise these with a one-line message that names the
file or option, the offending value, and the fix; the CLI prints them without a traceback."""

from __future__ import annotations


class DiffusegError(ValueError):
    """A user-facing error: bad file, shape, config value or option. The message is kept on one
    line: control characters (a newline in a file name, say) are shown escaped."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    """``text`` with control characters escaped as Python writes them (``\\n``, ``\\x7f``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class DataError(DiffusegError):
    """A file or dataset folder that cannot be read or is inconsistent."""


class OutputError(DiffusegError):
    """A file or folder that cannot be written: disk full, a file-size limit, a read-only or
    forbidden folder, a name too long (``diffuseg.core.atomic.writing``)."""


class ConfigError(DiffusegError):
    """A configuration key or value that does not exist or is out of range."""


class TrainingDiverged(DiffusegError):
    """A non-finite loss, gradient or weight; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM during training, after a resumable checkpoint was written (the CLI
    prints the message and exits 130, like an interrupted shell command)."""
