"""cdtool train: run a recipe (validated, resolved, stored with the run) into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cdtool.cli.options import Device, Quiet, friendly_errors, out_console
from cdtool.errors import InputError


def train(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe YAML (optional with --resume: the run's own).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key, e.g. --set optim.lr=0.001 "
                                                      "(repeatable; values parsed as YAML).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Run folder to continue from its last epoch.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default runs/<recipe name>).")] = None,
    device: Device = None,
    quiet: Quiet = False,
) -> None:
    """Train a model from a recipe: progress bar, per-epoch metrics, curves, best and last checkpoints."""
    from cdtool.engine.loop import train as run_training
    from cdtool.engine.recipe import load_recipe
    from cdtool.inference.detector import pick_device

    if recipe is None and resume is None:
        raise InputError("give a RECIPE, or --resume RUN to continue a run")
    source = recipe if recipe is not None else resume / "recipe.yaml"  # type: ignore[operator]
    r = load_recipe(source, set_ or [])
    run_dir = resume or out or Path("runs") / r.name
    result = run_training(r, run_dir, resume=resume is not None, device=pick_device(device), quiet=quiet)
    if not quiet:
        out_console.print(f"{result.run_dir}: best epoch {result.best_epoch} ({r.monitor} {result.best_score:.4f}, "
                          f"threshold {result.threshold:.3f}) -> {result.run_dir / 'best.safetensors'}")


# after Ctrl-C or SIGTERM (the partial outputs are gone)
ON_INTERRUPT = "the finished epochs are kept: cdtool train --resume RUN_FOLDER continues"


def register(app: typer.Typer) -> None:
    app.command("train")(friendly_errors(train, on_interrupt=ON_INTERRUPT))
