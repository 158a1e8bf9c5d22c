"""Options shared by several commands, defined once, and the error handling every command uses."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from cdtool.errors import CdtoolError

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


def friendly_errors(fn: Callable) -> Callable:
    """Turn library errors into one line on stderr and their exit code (1 failed, 2 bad input);
    an interrupt exits 130 after the library has removed its partial outputs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CdtoolError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        style = "yellow" if record.levelno >= logging.WARNING else "cyan"
        err_console.print(f"[{style}]{escape(record.getMessage())}[/]", markup=True)


def report_to_stderr(quiet: bool) -> None:
    """Show the library's one-line reports (which model and why; domain warnings) on stderr; --quiet keeps
    the warnings only."""
    logger = logging.getLogger("cdtool")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _ConsoleHandler)] + [_ConsoleHandler()]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()
