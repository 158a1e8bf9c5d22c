"""Errors the CLI turns into one-line messages instead of tracebacks."""


class CdtoolError(Exception):
    """A failure the user should read as one line (exit code 1)."""

    exit_code = 1


class InputError(CdtoolError):
    """Bad input or usage: unreadable, misaligned or unsuitable files, existing outputs (exit code 2)."""

    exit_code = 2


def write_failure(path, exc: OSError) -> CdtoolError:
    """A write that the system refused, as one line naming the file: a read-only or forbidden place is bad
    input (exit 2), a full disk or any other failure is a failure (exit 1)."""
    import errno

    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ENOENT):
        return InputError(f"{path}: cannot write here ({reason})")
    return CdtoolError(f"{path}: cannot write ({reason}); nothing was replaced")
