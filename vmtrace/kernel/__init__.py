"""Kernel knowledge: BTF layouts, kernel headers for bcc, tracefs and privileges."""
