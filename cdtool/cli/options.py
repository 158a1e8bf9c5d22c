"""Options shared by several commands, defined once, and the error handling every command uses."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

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


def parse_threshold(text: str | None) -> float | str | None:
    """A number in [0, 1] or a per-image method name (otsu, kmeans, gmm); None keeps the model's own."""
    from cdtool.inference.threshold import METHODS

    if text is None or text in METHODS:
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"expected a number in [0, 1] or one of {', '.join(METHODS)}, got {text!r}",
                                 param_hint="--threshold")
    return value


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


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()
