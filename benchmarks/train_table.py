"""Train every recipe given with several seeds and score each best checkpoint (and the last epoch's),
and the classical detector, on the held-out test pairs of the LEVIR + DSIFN split the recipes share.
Recipes that train on shifted pairs (data.train.shift) are tested on pairs shifted the same way. Writes
<out>/results.json (per run) and <out>/table.md (mean ± standard deviation over seeds); runs already
trained are scored again, not retrained. Run from the repository root:

    python benchmarks/train_table.py recipes/fc_siam_diff.yaml recipes/cosimnet_l2_mlso3.yaml ... --seeds 0 1 2
    python benchmarks/train_table.py recipes/oscd13_*.yaml --roots ../shared/data/oscd \
        --test oscd/pisa oscd/rennes --out runs/table_oscd
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cdtool.data.pair_folder import PairFolderDataset
from cdtool.io.checkpoint import load_checkpoint
from cdtool.engine.evaluate import evaluate_loader
from cdtool.engine.loop import train
from cdtool.engine.recipe import load_recipe
from cdtool.inference.detector import load_detector

TEST = ["levir/test_2_0000_0000", "levir/test_77_0512_0256", "levir/train_386_0512_0768",
        "dsifn/2_4", "dsifn/5_3", "dsifn/8_3"]
ROOTS = ["../shared/data/levir", "../shared/data/dsifn"]
SHIFT = {"px": 6, "deg": 3, "scale": 0.03}
SHOWN = ("f1", "iou", "precision", "recall", "auroc", "best_epoch", "f1_last", "auroc_last")


def test_set(shift: dict | None, roots: list[str], test: list[str]) -> PairFolderDataset:
    return PairFolderDataset(roots, pairs=test, crop=None, shift=shift, seed=12345)


def score(spec: str, data: PairFolderDataset) -> dict:
    det = load_detector(spec, data.channels)
    acc = evaluate_loader(det.model, DataLoader(data, batch_size=1), det.normalization, torch.device("cpu"),
                            det.threshold)
    return {**acc.compute(), "threshold": det.threshold}


def epochs_done(run: Path) -> int:
    """Epochs a run folder holds (0 when it holds none), so an interrupted table resumes its runs."""
    history = run / "metrics.json"
    return len(json.loads(history.read_text())) if (run / "last.safetensors").exists() and history.exists() else 0


def trained_run(recipe_path: str, seed: int, out: Path, results: dict):
    """The recipe at `seed`, its run folder under `out` (trained, or resumed when interrupted) and the
    minutes training took (kept from `results` when the run was already complete)."""
    r = load_recipe(recipe_path, [f"seed={seed}"])
    run = out / f"{r.name}_s{seed}"
    minutes = results.get(run.name, {}).get("train_minutes")
    done = epochs_done(run)
    if done < sum(ph.epochs for ph in r.phase_plan()):
        t0 = time.time()
        train(r, run, quiet=True, resume=done > 0)
        minutes = round((time.time() - t0) / 60, 2)
    return r, run, minutes


def load_results(out: Path) -> tuple[Path, dict]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    return path, (json.loads(path.read_text()) if path.exists() else {})


def write_table(out: Path, results: dict, shown: tuple[str, ...]) -> None:
    """<out>/table.md, one row per model over its seeds; also printed."""
    groups: dict[str, list[dict]] = {}
    for entry in results.values():
        groups.setdefault(entry["model"], []).append(entry)
    text = table(groups, shown)
    (out / "table.md").write_text(text)
    print(text)


def table(groups: dict[str, list[dict]], shown: tuple[str, ...] = SHOWN) -> str:
    """Markdown: one row per model, mean ± sample standard deviation over its runs."""
    rows = ["| model | runs | " + " | ".join(shown) + " | train min/run |", "|---|---|" + "---|" * (len(shown) + 1)]
    for name, runs in groups.items():
        cells = []
        for k in shown:
            v = np.array([r.get(k, np.nan) for r in runs], float)
            if np.isnan(v).all():
                cells.append("-")
                continue
            digits = 1 if k == "best_epoch" else 3
            cells.append(f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else ""))
        minutes = [r["train_minutes"] for r in runs if r.get("train_minutes") is not None]
        cells.append(f"{np.mean(minutes):.1f}" if minutes else "-")
        rows.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="runs/table")
    ap.add_argument("--roots", nargs="+", default=ROOTS, help="data folders of the test pairs")
    ap.add_argument("--test", nargs="+", default=TEST, help="held-out test pairs (root/name)")
    args = ap.parse_args()
    out = Path(args.out)
    res_path, results = load_results(out)
    plain, shifted = test_set(None, args.roots, args.test), test_set(SHIFT, args.roots, args.test)
    results["cva"] = {**score("cva", plain), "model": "cva"}
    results["cva (shifted test)"] = {**score("cva", shifted), "model": "cva (shifted test)"}
    for path in args.recipes:
        for seed in args.seeds:
            r, run, minutes = trained_run(path, seed, out, results)
            shift = r.data.source_args(r.primary_source()).get("shift")
            data = plain if shift is None else shifted if shift == SHIFT else test_set(shift, args.roots, args.test)
            scores, last = score(str(run / "best.safetensors"), data), score(str(run / "last.safetensors"), data)
            best_epoch = load_checkpoint(run / "best.safetensors")[1].epoch
            entry = {**scores, "model": r.name, "seed": seed, "epochs": r.schedule.epochs, "best_epoch": best_epoch,
                     "f1_last": last["f1"], "auroc_last": last["auroc"]}
            if minutes is not None:
                entry["train_minutes"] = minutes
            results[run.name] = entry
            res_path.write_text(json.dumps(results, indent=1))
            print(run.name, {k: round(entry[k], 4) for k in SHOWN}, flush=True)
    write_table(out, results, SHOWN)


if __name__ == "__main__":
    main()
