"""Train patch-classifier recipes (task 'patch') with several seeds and score each best checkpoint,
and the classical detector, on the test split of their labelled patch datasets, each pair scored at
its centre against its label. Writes <out>/results.json and <out>/table.md (mean ± std over seeds).
Run from the repository root, after making the datasets the recipes name (see their headers):

    python benchmarks/patch_table.py recipes/siamese_patch_under.yaml recipes/siamese_patch_over.yaml --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cdtool.engine.evaluate import evaluate_chips
from cdtool.engine.recipe import load_recipe
from train_table import load_results, trained_run, write_table

SHOWN = ("f1", "precision", "recall", "kappa", "auroc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="runs/patch_table")
    args = ap.parse_args()
    out = Path(args.out)
    res_path, results = load_results(out)
    for path in args.recipes:
        roots = load_recipe(path).data.args["root"]
        roots = roots if isinstance(roots, list) else [roots]
        data_name = "+".join(Path(r).name for r in roots)
        results[f"cva on {data_name}"] = {**evaluate_chips("cva", roots, "test"), "model": f"cva (Otsu), {data_name}"}
        for seed in args.seeds:
            r, run, minutes = trained_run(path, seed, out, results)
            scores = evaluate_chips(str(run / "best.safetensors"), roots, "test")
            results[run.name] = {**scores, "model": r.name, "seed": seed, "train_minutes": minutes}
            res_path.write_text(json.dumps(results, indent=1))
            print(run.name, {k: round(scores[k], 4) for k in SHOWN}, flush=True)
    write_table(out, results, SHOWN)


if __name__ == "__main__":
    main()
