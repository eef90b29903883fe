"""Command-line interface: one module per subcommand, errors mapped to one line at the edge."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _interrupted_early(_signum: int, _frame: FrameType | None) -> None:
    sys.stderr.write("vmtrace: interrupted\n")
    raise SystemExit(130)


def catch_early_interrupts() -> None:
    """A Ctrl-C while the modules load (click, bcc, pyroute2: a fraction of a second) is an
    interruption (exit 130), not a traceback; main() takes SIGINT over once loaded."""
    signal.signal(signal.SIGINT, _interrupted_early)


# The `vmtrace` console script imports vmtrace.cli.main before calling it: install the
# handler here, for that program only (a library user's SIGINT is theirs).
if os.path.basename(sys.argv[0] if sys.argv else "") == "vmtrace":
    catch_early_interrupts()
