"""cdtool evaluate: score predictions against ground truth, or a model on a labelled dataset folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cdtool.cli.options import Device, Overwrite, err_console, OneOf, ThresholdParser, friendly_errors, out_console
from cdtool.errors import InputError
from cdtool.metrics import NAMES


def evaluate(
    pred: Annotated[Optional[Path], typer.Argument(help="Prediction: a mask (read as TRUTH is) or scores in [0, 1]; "
                                                   "a file or a folder matched to TRUTH by file name.")] = None,
    truth: Annotated[Optional[Path], typer.Argument(help="Ground-truth mask file or folder: 0/1, 0/255, "
                                                    "0/1/2 (255 nodata), OSCD 1 unchanged / 2 changed, or black "
                                                    "and one colour; the file's nodata and alpha are nodata.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Checkpoint or registered model to run on --data.")] = None,
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="Labelled dataset folder (A/ B/ label/, OSCD "
                                                       "cities, or what `cdtool tile`/`patches` wrote); "
                                                       "repeatable.")] = None,
    split: Annotated[str, typer.Option("--split", parser=OneOf("cdtool.data.store:SPLITS", extra=("all",)),
                                       help="Split of `tile`/`patches` datasets to score (train, val, "
                                       "test or all).")] = "test",
    pairs: Annotated[Optional[str], typer.Option("--pairs", help="Comma-separated pair names or roots to score "
                                                 "(e.g. levir/test_2_0000_0000,dsifn).")] = None,
    exclude: Annotated[Optional[str], typer.Option("--exclude", help="Comma-separated pairs to leave out.")] = None,
    threshold: Annotated[Optional[str], typer.Option("--threshold", parser=ThresholdParser(), metavar="<number|method>",
                                                     help="Score threshold, or otsu, kmeans, gmm (default: the "
                                                     "model's; for score files the one detect tagged them with, else 0.5).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the scores as JSON here.")] = None,
    max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", help="Refuse PRED or TRUTH files of more "
                                                      "pixels than this [default: 10000000000].")] = None,
    device: Device = None,
    overwrite: Overwrite = False,
) -> None:
    """Precision, recall, F1, IoU of change, mIoU, accuracy, Cohen's kappa and AUROC (for scores)."""
    from cdtool.engine import evaluate as evaluation

    thr = threshold
    if json_out is not None:
        if json_out.exists() and not json_out.is_dir() and not overwrite:
            raise InputError(f"{json_out}: already exists (use --overwrite to replace it)")
        if json_out.is_dir() or not json_out.parent.is_dir():
            raise InputError(f"{json_out}: cannot write the scores there (a folder, or its folder is missing)")
    if model is not None:
        if pred is not None or not data:
            raise InputError("use either PRED TRUTH, or --model with --data")
        roots = [str(d) for d in data]
        if all((d / "dataset.json").is_file() for d in data):
            total, rows = evaluation.evaluate_chips(model, roots, None if split == "all" else split, thr, device), []
        else:
            seen = evaluation.seen_pairs(model, roots) if pairs is None and exclude is None else []
            if seen:
                err_console.print(f"scoring held-out pairs only: {len(seen)} pair(s) the model was trained or "
                                  "validated on are left out (name them with --pairs to score them too)")
            total, rows = evaluation.evaluate_model(model, roots, _names(pairs), _names(exclude), thr, device)
    else:
        if pred is None or truth is None:
            raise InputError("give PRED and TRUTH, or --model CKPT --data DATASET")
        if max_pixels is not None and max_pixels < 1:
            raise InputError(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
        total, rows = evaluation.evaluate_files(pred, truth, thr,
                                                evaluation.MAX_PIXELS if max_pixels is None else max_pixels)
    rows_all = rows + [{"name": "all", **total}]
    table = Table(title="change detection scores")
    # in a narrow terminal long pair names wrap onto a second line; scores and names are never cut
    table.add_column("", overflow="fold")
    for name in NAMES:
        table.add_column(SHORT.get(name, name), justify="right", no_wrap=True, min_width=5)
    for row in rows_all:
        table.add_row(str(row["name"]), *(_fmt(row.get(k)) for k in NAMES))
    out_console.print(table)
    if json_out is not None:
        from cdtool.io.outputs import write_text_atomic

        write_text_atomic(json_out, json.dumps(_clean({"total": total, "per_pair": rows}), indent=1))


SHORT = {"precision": "prec", "recall": "rec"}  # headers that fit 80 columns beside long pair names


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _clean(v):
    """NaN (an undefined score) becomes null, so the file is strict JSON."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v


def register(app: typer.Typer) -> None:
    app.command("evaluate")(friendly_errors(evaluate))
