"""Errors the CLI turns into one-line messages instead of tracebacks."""


class CdtoolError(Exception):
    """A failure the user should read as one line (exit code 1)."""

    exit_code = 1


class InputError(CdtoolError):
    """Bad input or usage: unreadable, misaligned or unsuitable files, existing outputs (exit code 2)."""

    exit_code = 2
