"""The `cdtool` command. Each subcommand lives in its own module here and exposes `register(app)`;
the modules parse options, call one library function and report."""

from __future__ import annotations

import importlib
import pkgutil

import typer

from cdtool.cli.options import Debug, OneLineUsageErrors

app = typer.Typer(
    cls=OneLineUsageErrors,
    name="cdtool",
    help="Change detection between two images of the same place taken at two times.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from cdtool import __version__

        typer.echo(f"cdtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="On an error, print the full traceback before its one line."),
) -> None:
    """Change detection between two images of the same place taken at two times."""
    Debug.enabled = debug


for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    _module = importlib.import_module(f"{__name__}.{_mod}")
    if hasattr(_module, "register"):
        _module.register(app)


def main() -> None:
    app()
