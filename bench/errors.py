"""Errors the harness reports as one line (no traceback) with a non-zero exit."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping


class BenchError(Exception):
    """Bad input or environment: unknown image, corrupt file, bad flag value, unusable directory."""


class RunStopped(Exception):
    """A run stopped on request (SIGINT, SIGTERM) with everything saved; the message says how to resume."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def closest(name: str, spellings: Mapping[str, str]) -> str | None:
    """The canonical name whose spelling (a key of ``spellings``) is nearest to ``name``, if one is near."""
    lowered = {spelling.lower(): canonical for spelling, canonical in spellings.items()}
    # 0.7 rather than difflib's 0.6: at 0.6 'nope' already "matches" 'couple'.
    matches = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.7)
    return lowered[matches[0]] if matches else None


def unknown_choice(what: str, name: str, choices: Iterable[str], hint: str | None = None) -> str:
    """One line for a name not among ``choices``: "unknown image 'hous'; did you mean 'house'? (choose from
    barbara, boat, ...)". ``hint`` defaults to the closest choice; without one the choices alone are listed."""
    choices = list(choices)
    hint = hint or closest(name, {c: c for c in choices})
    listed = ", ".join(choices)
    return f"{what} {name!r}; did you mean {hint!r}? (choose from {listed})" if hint else f"{what} {name!r}; choose from {listed}"
