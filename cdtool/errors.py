"""Errors the CLI turns into one-line messages instead of tracebacks."""


class CdtoolError(Exception):
    """A failure the user should read as one line (exit code 1)."""

    exit_code = 1


class InputError(CdtoolError):
    """Bad input or usage: unreadable, misaligned or unsuitable files, existing outputs (exit code 2)."""

    exit_code = 2


class OptionError(InputError):
    """A bad value of one option, named by the library's own field (`split_by`), so a Python caller reads the
    argument it passed and the CLI can show the flag the user typed (`--split-by`)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


class NothingToDo(CdtoolError):
    """Not a failure: what was asked is already done (`detect --resume` on a run that completed); the CLI
    prints the line and exits 0."""

    exit_code = 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler ending the job, `kill`), raised where SIGINT raises KeyboardInterrupt, so both take
    the same way out: partial outputs removed, what a rerun or --resume continues from kept."""


def disk_full(path) -> bool:
    """Whether the file system holding `path` has (almost) no space left: libraries that write through their
    own I/O (numpy, GDAL, SQLite, safetensors) report a full disk in words of their own."""
    import shutil
    from pathlib import Path

    try:
        return shutil.disk_usage(Path(path).parent).free < 1 << 20
    except OSError:
        return False


def output_name(path):
    """The output a hidden partial file will become (`.changes.partial-1a2b.gpkg` -> `changes.gpkg`), so a
    failure names the file the user asked for; other paths as they are."""
    import re
    from pathlib import Path

    p = Path(path)
    m = re.fullmatch(r"\.(?P<stem>.+)\.partial(?:-[0-9a-f]+)?(?P<ext>\.[^.]*)?", p.name)
    return p.with_name(m["stem"] + (m["ext"] or "")) if m else p


def write_failure(path, exc: Exception) -> CdtoolError:
    """A write that failed, as one line naming the file: a read-only or forbidden place is bad input (exit 2),
    a full disk or any other failure is a failure (exit 1)."""
    import errno

    path = output_name(path)
    code = exc.errno if isinstance(exc, OSError) else None  # GDAL's errors carry an errno of their own (1 = AppDefined)
    if code in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ENOENT):
        return InputError(f"{path}: cannot write here ({getattr(exc, 'strerror', None) or exc})")
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or disk_full(path):
        reason = exc.strerror if code is not None and exc.strerror else "the disk is full"
    else:
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return CdtoolError(f"{path}: cannot write ({reason}); nothing was replaced")
