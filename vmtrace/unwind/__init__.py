"""User-space unwinding and symbolisation of captured user stacks, from the files on disk."""

from vmtrace.unwind.unwinder import Frame, Unwinder, UserStack

__all__ = ["Frame", "Unwinder", "UserStack"]
