"""vmtrace: explain every change of a process's VmPeak with eBPF."""

__version__ = "0.1.0"
