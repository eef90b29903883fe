"""User stacks: snapshots from the kernel and the frames unwound from them."""

from vmtrace.unwind.types import Frame, UserStack

__all__ = ["Frame", "UserStack"]
