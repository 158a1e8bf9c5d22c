"""Train every recipe given (in order) and score each best checkpoint, and the classical detector, on the
held-out test pairs of the LEVIR + DSIFN split the recipes share. Writes runs/table/results.json and a
markdown table. Run from the repository root:

    python benchmarks/train_table.py recipes/fc_siam_diff.yaml recipes/cosimnet_l2_mlso3.yaml ...
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cdtool.data.pair_folder import PairFolderDataset
from cdtool.engine.evaluate import evaluate_loader
from cdtool.engine.loop import train
from cdtool.engine.recipe import load_recipe
from cdtool.inference.detector import load_detector

TEST = ["levir/test_2_0000_0000", "levir/test_77_0512_0256", "levir/train_386_0512_0768",
        "dsifn/2_4", "dsifn/5_3", "dsifn/8_3"]
ROOTS = ["../shared/data/levir", "../shared/data/dsifn"]


def score(spec: str, shift: dict | None) -> dict:
    det = load_detector(spec, 3)
    data = PairFolderDataset(ROOTS, pairs=TEST, crop=None, augment=False, shift=shift, seed=12345)
    acc, _ = evaluate_loader(det.model, DataLoader(data, batch_size=1), det.normalization, torch.device("cpu"),
                             det.threshold)
    return {**acc.compute(), "threshold": det.threshold}


def main(recipes: list[str]) -> None:
    out = Path("runs/table")
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    results["cva"] = score("cva", None)
    results["cva (shifted test)"] = score("cva", {"px": 6, "deg": 3, "scale": 0.03})
    for path in recipes:
        r = load_recipe(path)
        run = Path("runs") / r.name
        t0 = time.time()
        if not (run / "last.safetensors").exists():
            train(r, run, quiet=True)
        minutes = (time.time() - t0) / 60
        shift = r.data.train.get("shift")
        results[r.name] = {**score(str(run / "best.safetensors"), shift), "epochs": r.schedule.epochs,
                           "train_minutes": round(minutes, 1)}
        res_path.write_text(json.dumps(results, indent=1))
        print(r.name, {k: round(v, 4) if isinstance(v, float) else v for k, v in results[r.name].items()}, flush=True)
    rows = ["| model | F1 | IoU | precision | recall | AUROC | threshold |", "|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        thr = m["threshold"] if isinstance(m["threshold"], str) else f"{m['threshold']:.3f}"
        rows.append(f"| {name} | {m['f1']:.3f} | {m['iou']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | "
                    f"{m['auroc']:.3f} | {thr} |")
    (out / "table.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
