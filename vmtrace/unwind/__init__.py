"""User-space unwinding and symbolisation of captured user stacks, from the files on disk.

`Unwinder` (pyelftools underneath) is imported on first use, so that the record types can be
used by the offline tools without loading an ELF library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmtrace.records import Frame, UserStack

if TYPE_CHECKING:
    from vmtrace.unwind.unwinder import Unwinder

__all__ = ["Frame", "Unwinder", "UserStack"]


def __getattr__(name: str) -> Any:
    if name == "Unwinder":
        from vmtrace.unwind.unwinder import Unwinder

        return Unwinder
    raise AttributeError(name)
