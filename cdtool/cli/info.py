"""cdtool info: what a checkpoint is and the domain it was trained for, read without executing code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cdtool.cli.options import friendly_errors, out_console


def info(
    model: Annotated[str, typer.Argument(help="Checkpoint file (.safetensors) or registered model name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the card and metadata as JSON.")] = False,
) -> None:
    """Show a model's card: bands, value range, GSD, kind of change, data and recipe, held-out scores."""
    from cdtool.inference.detector import load_detector

    det = load_detector(model)
    if as_json:
        out_console.print_json(json.dumps({"model": det.name, "threshold": det.threshold,
                                           "normalization": det.normalization, "card": det.card.to_meta(),
                                           "provenance": _provenance(det.meta)}, default=str))
        return
    params = sum(p.numel() for p in det.model.parameters())
    t = Table("field", "value", title=f"{Path(model).name}", show_header=False)
    t.add_row("model", det.name)
    t.add_row("parameters", f"{params:,}")
    t.add_row("threshold", str(det.threshold))
    t.add_row("normalisation", det.normalization.get("mode", ""))
    for key, value in det.card.describe():
        t.add_row(key, value)
    for source, scores in det.card.scores.items():
        t.add_row(f"scored on {source}", ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in scores.items()))
    out_console.print(t)


def _provenance(meta) -> dict:
    """Where training stood when a checkpoint was written (nothing for registered models and shipped weights)."""
    if meta is None:
        return {}
    return {k: v for k, v in (("epoch", meta.epoch), ("phase", meta.phase)) if v is not None}


def register(app: typer.Typer) -> None:
    app.command("info")(friendly_errors(info))
