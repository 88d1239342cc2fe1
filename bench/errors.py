"""Errors the harness reports as one line (no traceback) with a non-zero exit."""


class BenchError(Exception):
    """Bad input or environment: unknown image, corrupt file, bad flag value, unusable directory."""
