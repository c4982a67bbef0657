"""The executors now live in layer 1 (:mod:`condense.runtime.executors`), so synthesis methods can spread
their own jobs too; this name stays for code written against it."""
from condense.runtime.executors import EXECUTORS, execute  # noqa: F401
