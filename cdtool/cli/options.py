"""Options shared by several commands, defined once, and the error handling every command uses."""

from __future__ import annotations

import functools
import importlib
import sys
import traceback
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from cdtool.errors import CdtoolError, NothingToDo, OptionError, Terminated
from cdtool.runtime import sigterm_as_interrupt

# click's UsageError, from whichever click this typer runs on (its own copy in recent versions)
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)

OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if missing).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
Device = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N (default: cuda if available).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]


def parse_int_list(text: str | None, what: str) -> list[int] | None:
    """'1,2,3' or '1 2 3' -> [1, 2, 3]; a bad entry is a usage error naming the option."""
    if text is None or not text.strip():
        return None
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(f"expected integers like 1,2,3, got {text!r}", param_hint=what) from None


class OneOf:
    """A parser for an option whose valid values are a library constant (`"module:NAME"`, a tuple or a dict's
    keys), read when the option is parsed: a bad value is a usage error naming the flag and the choices, and
    `cdtool -h` imports no library. `extra` adds values the CLI itself gives a meaning (evaluate's `all`)."""

    def __init__(self, source: str, extra: tuple[str, ...] = ()):
        self.source, self.extra = source, extra

    def values(self) -> tuple[str, ...]:
        module, name = self.source.split(":")
        return tuple(getattr(importlib.import_module(module), name)) + self.extra

    def __call__(self, text: str) -> str:
        valid = self.values()
        if text not in valid:
            raise typer.BadParameter(f"{text!r} is not one of {', '.join(valid)}")
        return text


class ThresholdParser:
    """A number in [0, 1] or a per-image method name (`cdtool.inference.threshold.METHODS`)."""

    methods = OneOf("cdtool.inference.threshold:METHODS")

    def values(self) -> tuple[str, ...]:
        return self.methods.values()

    def __call__(self, text: str) -> float | str:
        if text in self.values():
            return text
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 1.0:
            raise typer.BadParameter(f"expected a number in [0, 1] or one of {', '.join(self.values())}, "
                                     f"got {text!r}")
        return value


def flag_of(field: str, flags: dict[str, str] | None = None) -> str:
    """The CLI flag of a library field: `flags` where a command names it otherwise, else `--field-name`."""
    return (flags or {}).get(field, "--" + field.replace("_", "-"))


class Debug:
    """Whether `cdtool --debug` asked for full tracebacks (set by the root callback for each invocation)."""

    enabled = False


def friendly_errors(fn: Callable, on_interrupt: str = "", flags: dict[str, str] | None = None) -> Callable:
    """Turn errors into one line on stderr and an exit code (1 failed, 2 bad input): library errors with
    their own message, system errors with the file they concern, anything else as an unexpected error;
    `--debug` prints the traceback first. SIGTERM is handled as SIGINT: after the library has removed its
    partial outputs, one line (with `on_interrupt`: how to continue) and exit 130 (SIGINT) or 143 (SIGTERM),
    the codes a shell gives a process those signals end. A `NothingToDo` is one line on stdout, exit 0.
    An `OptionError` names a library field; it is shown with the command's flag for it (`flags`, see flag_of)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, UsageError):
            raise
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            err_console.print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}"
                              f"{'; ' + on_interrupt if on_interrupt else ''}")
            raise typer.Exit(143 if terminated else 130) from None
        except NothingToDo as exc:
            out_console.print(escape(str(exc)))
            raise typer.Exit(0) from None
        except OptionError as exc:
            error, message, code = exc, f"{flag_of(exc.field, flags)} {exc.problem}", exc.exit_code
        except CdtoolError as exc:
            error, message, code = exc, str(exc), exc.exit_code
        except OSError as exc:
            where = exc.filename if exc.filename is not None else "system error"
            error, message, code = exc, f"{where}: {exc.strerror or exc}", 1
        except Exception as exc:  # a bug: still one line, the traceback with --debug
            error, message = exc, f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
            code = 1
        if Debug.enabled:
            traceback.print_exception(error)
        err_console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", markup=True)
        raise typer.Exit(code) from None

    return wrapper


class OneLineUsageErrors(TyperGroup):
    """The command group whose usage errors (unknown option, bad value, missing argument) are one line on
    stderr, exit 2, like every other refusal; bare `cdtool` still shows the help."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageError as exc:
            if not standalone_mode:
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `cdtool`: typer shows the help its own way
                return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)
            hint = f" (see '{exc.ctx.command_path} -h')" if exc.ctx is not None else ""
            err_console.print(f"[bold red]error:[/] {escape(' '.join(exc.format_message().split()))}{hint}",
                              markup=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            err_console.print("aborted")
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()
