"""User call chains from stack snapshots, unwound with each object's call frame information
and symbolised from the files on disk."""

from vmtrace.unwind.types import Frame, UserStack

__all__ = ["Frame", "UserStack"]
