"""What a run folder holds besides the checkpoints' tensors: the metrics table and curves, the run state
that `--resume` reads (optimisers, schedulers, scaler, history: tensors and plain values only, read back
with ``torch.load(weights_only=True)``), the manifest that vouches for the resume files, and what the
loop prints."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from cdtool.errors import InputError
from cdtool.errors import write_failure
from cdtool.io.checksum import sha256
from cdtool.io.outputs import replaced_when_done, write_text_atomic

STATE_FILE = "last.state.pt"


def write_history(run_dir: Path, history: list[dict]) -> None:
    """metrics.json, metrics.csv and curves.png, each replaced whole (a full disk leaves the previous one)."""
    write_text_atomic(run_dir / "metrics.json", json.dumps(history, indent=1))
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with replaced_when_done(run_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    with replaced_when_done(run_dir / "curves.png") as tmp:
        plot_curves(tmp, history)


def plot_curves(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(ep, [r["train_loss"] for r in history], marker="o")
    a.set_xlabel("epoch"), a.set_ylabel("training loss"), a.grid(alpha=0.3)
    for k in ("val_f1", "val_iou", "val_auroc"):
        ys = [r.get(k, float("nan")) for r in history]
        if not all(math.isnan(y) for y in ys):
            b.plot(ep, ys, marker="o", label=k.removeprefix("val_"))
    b.set_xlabel("epoch"), b.set_ylabel("validation"), b.set_ylim(0, 1), b.grid(alpha=0.3)
    if b.lines:
        b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


MANIFEST = "last.json"
RESUME_FILES = ("last.safetensors", STATE_FILE)


PREVIOUS = ".prev-"  # the last consistent pair, kept (as hard links) while a new one is written


def keep_previous(run_dir: Path) -> None:
    """Before the resume files are replaced: link the current pair under hidden names, so a crash between the
    two saves still leaves the pair the manifest (written last) describes."""
    for name in RESUME_FILES:
        prev = run_dir / (PREVIOUS + name)
        prev.unlink(missing_ok=True)
        if (run_dir / name).is_file():
            try:
                os.link(run_dir / name, prev)
            except OSError:  # a file system without hard links
                shutil.copy2(run_dir / name, prev)


def write_manifest(run_dir: Path, epoch: int, phase: str) -> None:
    """Checksums of the resume files, written after both: resume trusts the pair only when they match. The
    previous pair is dropped once the new one is on record."""
    manifest = {"epoch": epoch, "phase": phase, "sha256": {n: sha256(run_dir / n) for n in RESUME_FILES}}
    write_text_atomic(run_dir / MANIFEST, json.dumps(manifest, indent=1))
    for name in RESUME_FILES:
        (run_dir / (PREVIOUS + name)).unlink(missing_ok=True)


def check_manifest(run_dir: Path) -> None:
    """Refuse to resume from a torn pair (a crash or full disk between the two saves, or files from two runs)."""
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        sums = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{run_dir}: no readable {MANIFEST}: the last save did not finish (or an older cdtool "
                         "made this run); start a new run") from None
    torn = [n for n in RESUME_FILES if not (run_dir / n).is_file() or sha256(run_dir / n) != sums.get(n)]
    if not torn:
        return
    previous = [run_dir / (PREVIOUS + n) for n in RESUME_FILES]
    if all(p.is_file() and sha256(p) == sums.get(n) for p, n in zip(previous, RESUME_FILES)):
        for p, name in zip(previous, RESUME_FILES):  # a crash between the saves: back to the recorded pair
            os.replace(p, run_dir / name)
        return
    raise InputError(f"{run_dir / torn[0]}: does not match {MANIFEST} (epoch {manifest.get('epoch', '?')}); "
                     "the last save was torn, so resuming would diverge: start a new run")


def save_state(path: Path, optims, scheds, scaler, epoch: int, phase: str, best: float, best_epoch: int,
                best_thr: float, history: list[dict]) -> None:
    st = {"optimizers": {k: o.state_dict() for k, o in optims.items()},
          "schedulers": {k: s.state_dict() for k, s in scheds.items() if s is not None},
          "scaler": scaler.state_dict() if scaler is not None else {},
          "epoch": epoch, "phase": phase, "best": best, "best_epoch": best_epoch, "best_threshold": best_thr,
          "history": json.dumps(history)}
    with replaced_when_done(path) as tmp:
        try:
            torch.save(st, tmp)
        except RuntimeError as exc:  # torch reports a failed write (a full disk) as a RuntimeError
            raise write_failure(path, exc) from None


def progress(loader, desc: str, quiet: bool):
    if quiet:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


def degenerate_validation(pos_hist: np.ndarray, neg_hist: np.ndarray, threshold: float) -> list[str]:
    """What makes a validation score meaningless: no changed pixels to find, or a model that marks (almost)
    everything or nothing as change at its threshold."""
    total = pos_hist.sum() + neg_hist.sum()
    if total == 0:
        return []
    out = []
    if pos_hist.sum() == 0:
        out.append("the validation data holds no changed pixels: its F1 and a threshold tuned on it mean nothing")
    k = min(int(threshold * len(pos_hist)), len(pos_hist))
    flagged = (pos_hist[k:].sum() + neg_hist[k:].sum()) / total
    if flagged >= 0.99:
        out.append(f"the model marks {flagged:.0%} of the validation pixels as change (threshold {threshold:.3g})")
    elif flagged == 0 and pos_hist.sum() > 0:
        out.append(f"the model marks no validation pixel as change (threshold {threshold:.3g})")
    return out


def warn(text: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[yellow]warning:[/] {text}", markup=True)


def report(row: dict) -> None:
    from rich.console import Console

    keys = [k for k in ("train_loss", "val_f1", "val_iou", "val_auroc", "threshold", "seconds") if k in row]
    Console(stderr=True, highlight=False).print(
        f"epoch {row['epoch']}: " + "  ".join(f"{k}={row[k]:.4g}" for k in keys))


def load_state(path: Path) -> dict:
    """The run state of `save_state`; never unpickles code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code in it, or a damaged file: never executed
        raise InputError(f"{path}: not a cdtool run state ({str(exc).splitlines()[0][:120]})") from None
