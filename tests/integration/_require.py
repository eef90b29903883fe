"""Skip a test whose prerequisite is missing, or fail it when VMTRACE_REQUIRE_BPF=1.

CI machines that are meant to trace set VMTRACE_REQUIRE_BPF=1 so that a broken environment
shows up as failures instead of a quietly green run of skips.
"""

from __future__ import annotations

import os

import pytest


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("VMTRACE_REQUIRE_BPF") == "1":
        pytest.fail(f"prerequisite missing with VMTRACE_REQUIRE_BPF=1: {reason}", pytrace=False)
    pytest.skip(reason)
