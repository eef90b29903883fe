"""User stack frames as the log, the console, the report and folded stacks write them (pure).

A frame (vmtrace.unwind.Frame) is written to the log as an object (docs/log-schema.md):
`address` (hex string), `function`, `offset`, `module`, `module_offset`, and `file`/`line`
when known. Version 1 logs had one string per frame, already symbolised; such a frame is kept
as a frame whose `function` is that string, with no offset and no module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from vmtrace.records import Frame

FrameRecord = dict[str, Any]


def frame_record(f: Frame) -> FrameRecord:
    """The log object of a frame."""
    rec: FrameRecord = {
        "address": hex(f.address),
        "function": f.function,
        "offset": f.offset,
        "module": f.module,
        "module_offset": f.module_offset,
    }
    if f.file is not None:
        rec["file"] = f.file
    if f.line is not None:
        rec["line"] = f.line
    return rec


def legacy_frame(text: str) -> Frame:
    """A version 1 frame: a string such as "__mmap64+0x13 [libc.so.6]"."""
    return Frame(0, text, None, None, None)


def frame_of(rec: Mapping[str, Any]) -> Frame:
    """A frame object of a record that schema wrote or logread checked (not re-checked)."""
    addr = rec.get("address")
    return Frame(
        address=int(addr, 16) if isinstance(addr, str) else int(addr or 0),
        function=rec.get("function"),
        offset=rec.get("offset"),
        module=rec.get("module"),
        module_offset=rec.get("module_offset"),
        file=rec.get("file"),
        line=rec.get("line"),
    )


def frames_of(stack: Any) -> list[Frame]:
    """The frames of a record's `stack` (objects, or version 1 strings); [] for none."""
    if not stack:
        return []
    return [legacy_frame(f) if isinstance(f, str) else frame_of(f) for f in stack]


def _source(f: Frame) -> str:
    if f.file is None:
        return ""
    return f" at {f.file}" + (f":{f.line}" if f.line is not None else "")


def describe_frame(f: Frame) -> str:
    """`func+0x13 (/usr/lib/x86_64-linux-gnu/libc.so.6)`, or `/path/module+0x1234` where
    the module has no symbol for it; `at file.c:12` after either when the line is known.

    No absolute address unless neither a symbol nor a module is known (an unwinder does not
    give such frames), so one call site reads the same in every process and every run."""
    if f.function is not None:
        text = f.function + (f"+0x{f.offset:x}" if f.offset is not None else "")
        if f.module is not None:
            text += f" ({f.module})"
    elif f.module is not None and f.module_offset is not None:
        text = f"{f.module}+0x{f.module_offset:x}"
    elif f.module is not None:
        text = f"{f.module} (at 0x{f.address:x})"
    else:
        text = f"?? (at 0x{f.address:x})"
    return text + _source(f)


def short_frame(f: Frame) -> str:
    """A frame for one-line call chains: `func+0x13 [libc.so.6]`, `libc.so.6+0x1234`."""
    module = os.path.basename(f.module) if f.module is not None else None
    if f.function is not None:
        text = f.function + (f"+0x{f.offset:x}" if f.offset is not None else "")
        return text + (f" [{module}]" if module is not None else "")
    if module is not None and f.module_offset is not None:
        return f"{module}+0x{f.module_offset:x}"
    return f"{module or '??'} (at 0x{f.address:x})"


def folded_frame(f: Frame) -> str:
    """A frame as folded stacks name it: the function without its offset (so that the calls
    of one function merge), else `module+0xoffset`. No `;` (the frame separator) and no
    newline; spaces are fine (the count is after the last one)."""
    if f.function is not None:
        name = f.function
    elif f.module is not None and f.module_offset is not None:
        name = f"{os.path.basename(f.module)}+0x{f.module_offset:x}"
    else:
        name = short_frame(f)
    return name.replace(";", ":").replace("\n", " ").replace("\r", " ")
