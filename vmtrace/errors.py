"""The one exception hierarchy of vmtrace; the CLI edge turns each into a one-line message.

Messages are worded "failed to X: reason" and end with the fix where there is one.
"""


class VmtraceError(Exception):
    """Base of every error vmtrace reports to its user."""

    exit_code = 1


class UsageError(VmtraceError):
    """Bad input from the command line (exit status 2, like click's usage errors)."""

    exit_code = 2


class EnvironmentProblem(VmtraceError):
    """The machine cannot trace: no bcc, no BTF, no tracefs, no privileges, no headers."""


class TargetError(VmtraceError):
    """The process to trace does not exist, is a kernel thread, or went away."""


class ProbeError(VmtraceError):
    """BPF programs failed to compile, load or attach."""


class LogFormatError(VmtraceError):
    """An event log that cannot be read (malformed line, newer schema)."""


class OutputError(VmtraceError):
    """An output file that cannot be created or written."""
