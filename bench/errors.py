"""Errors the harness reports as one line (no traceback) with a non-zero exit."""


class BenchError(Exception):
    """Bad input or environment: unknown image, corrupt file, bad flag value, unusable directory."""


class RunStopped(Exception):
    """A run stopped on request (SIGINT, SIGTERM) with everything saved; the message says how to resume."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
