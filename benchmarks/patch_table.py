"""Train patch-classifier recipes (task 'patch') with several seeds and score each best checkpoint,
and the classical detector, on the test split of their labelled patch datasets, each pair scored at
its centre against its label. Writes <out>/results.json and <out>/table.md (mean ± std over seeds).
Run from the repository root, after making the datasets the recipes name (see their headers):

    python benchmarks/patch_table.py recipes/siamese_patch_under.yaml recipes/siamese_patch_over.yaml --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cdtool.engine.evaluate import evaluate_chips
from cdtool.engine.loop import train
from cdtool.engine.recipe import load_recipe
from train_table import epochs_done, table

SHOWN = ("f1", "precision", "recall", "kappa", "auroc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="runs/patch_table")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    for path in args.recipes:
        base = load_recipe(path)
        roots = base.data.args["root"]
        roots = roots if isinstance(roots, list) else [roots]
        data_name = "+".join(Path(r).name for r in roots)
        results[f"cva on {data_name}"] = {**evaluate_chips("cva", roots, "test")[0], "model": f"cva (Otsu), {data_name}"}
        for seed in args.seeds:
            r = load_recipe(path, [f"seed={seed}"])
            run = out / f"{r.name}_s{seed}"
            minutes = results.get(run.name, {}).get("train_minutes")
            if epochs_done(run) < r.schedule.epochs:  # new, or interrupted: resume
                t0 = time.time()
                train(r, run, quiet=True, resume=epochs_done(run) > 0)
                minutes = round((time.time() - t0) / 60, 2)
            scores, _ = evaluate_chips(str(run / "best.safetensors"), roots, "test")
            results[run.name] = {**scores, "model": r.name, "seed": seed, "train_minutes": minutes}
            res_path.write_text(json.dumps(results, indent=1))
            print(run.name, {k: round(scores[k], 4) for k in SHOWN}, flush=True)
    groups: dict[str, list[dict]] = {}
    for entry in results.values():
        groups.setdefault(entry["model"], []).append(entry)
    text = table(groups, SHOWN)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
