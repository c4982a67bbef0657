"""User-facing errors.

Anything a user can cause (a bad flag, a missing dataset, a corrupt file) raises a
:class:`CondenseError`. The CLI prints its message as one line and exits non-zero,
without a traceback unless ``--debug`` is given. Internal bugs stay ordinary
exceptions so they are never mistaken for user mistakes.
"""


class CondenseError(Exception):
    """A problem the user can fix; the message is one self-contained line."""


class DataError(CondenseError):
    """A dataset is unknown, missing on disk, or malformed."""


class ArchError(CondenseError):
    """An architecture spec is unknown or cannot take the requested input shape."""


class FormatError(CondenseError):
    """A file is not in the expected format, of an unknown version, corrupt or inconsistent."""


class ConfigError(CondenseError):
    """A preset or option value is unknown or out of range."""


def error_line(e: BaseException, limit: int | None = None) -> str:
    """An exception as one line: its type and the first non-blank line of its message (clipped to
    ``limit`` characters when given), for job logs and reports."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."
