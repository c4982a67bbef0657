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
