"""One-class reproduction tables: paper 004's protocol (each class normal, trained on its training
images, AUROC on the whole test set) for rotnet_ae, CAE and the RotNet score; paper 003's loss ablation for
dual_ae; change as anomaly on PCD patch pairs; and per pair with no labels at all (`self`: a CAE trained on the
unchanged-looking windows of one pair, data kind pair_windows, scored on that same pair beside CVA and
PCA-kmeans). Every run goes through the training engine with a shipped
recipe plus `--set`-style overrides, and reports the AUROC of the final model (the last epoch, calibrated),
never a checkpoint picked on the test set.

    python benchmarks/oneclass_table.py p004 --source fashion_mnist --classes 0 1 2 3 4 5 6 7 8 9 \
        --subset 1000 --epochs 3 --width 8 --seeds 0
    python benchmarks/oneclass_table.py p003 --classes 5 3 --epochs 15 --seeds 0 1
    python benchmarks/oneclass_table.py p003 --methods +dual --also-score generator   # full method, both scores
    python benchmarks/oneclass_table.py p003 --methods +dual --g-dual against      # G's other side of L_dual
    python benchmarks/oneclass_table.py pcd --root patches/pcd_levir --epochs 10
    python benchmarks/oneclass_table.py self --root ../shared/data/levir --epochs 15 --seeds 0 1
    python benchmarks/oneclass_table.py tables --inputs a.json b.json      # merge rows of several runs

Rows: method, class, seed, AUROC, wall seconds; then mean ± std per method (over classes and seeds). With
--json, every row is written to that file as soon as it is measured (a killed run keeps its rows); `--device
cuda` trains on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


DEVICE = "cpu"
JSON_OUT: Path | None = None
ROWS: list[dict] = []


def record(row: dict) -> None:
    """Print one measured row and, with --json, rewrite that file with every row so far."""
    ROWS.append(row)
    print(json.dumps(row), flush=True)
    if JSON_OUT is not None:
        JSON_OUT.write_text(json.dumps({"argv": sys.argv, "rows": ROWS}, indent=1))


def run(recipe_file: str, overrides: dict, seed: int, keep: Path | None = None,
        rescore: tuple[str, ...] = ()) -> tuple[float, float, list[dict]]:
    """Train a recipe with overrides (dotted keys); (final AUROC, wall seconds, history). With `keep`, the
    run folder is written there (and kept) instead of a temporary folder. With `rescore`, the final model is
    also validated under each of those `score` model args, from the same weights (history's last row gains
    `val_auroc_<score>`): one training run tells a model's training apart from the score read off it."""
    from cdtool.engine.loop import train
    from cdtool.engine.recipe import load_recipe, resolve_paths, set_key

    path = RECIPES / recipe_file
    tree = resolve_paths(yaml.safe_load(path.read_text()), path.parent)
    for k, v in {**overrides, "seed": seed}.items():
        set_key(tree, k, v)
    recipe = load_recipe(tree)
    t0 = time.time()
    if keep is not None:
        res = train(recipe, keep, quiet=True, device=torch.device(DEVICE))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            res = train(recipe, Path(tmp) / "run", quiet=True, device=torch.device(DEVICE))
    wall = time.time() - t0
    if rescore:
        res.history[-1].update({f"val_auroc_{s}": a for s, a in rescored(recipe, res.modules, rescore).items()})
    aurocs = [r["val_auroc"] for r in res.history if "val_auroc" in r]
    return (aurocs[-1] if aurocs else float("nan")), wall, res.history


def rescored(recipe, modules: dict, scores: tuple[str, ...]) -> dict[str, float]:
    """Exact AUROC on the recipe's validation set of the trained model with its `score` switched to each of
    `scores` in turn, through the task's own validation (a fresh task holding the trained modules)."""
    from torch.utils.data import DataLoader

    from cdtool.data.registry import build_dataset
    from cdtool.engine.task import TASKS

    device = torch.device(DEVICE)
    val = build_dataset(recipe.data.val.kind, role="val", seed=recipe.seed, **recipe.data.val_args())
    model = modules["model"]
    task = TASKS.get(recipe.task)(recipe, model.in_channels, device, init=False)
    task.nets.update(modules)
    was, out = model.score, {}
    for s in scores:
        model.score = s
        out[s] = task.validate(DataLoader(val, batch_size=1), device, False).compute()["auroc"]
    model.score = was
    return out


def summarise(rows: list[dict], paper: dict[str, float] | None = None) -> str:
    out = ["| method | runs | mean AUROC ± std | paper | mean wall s/run |", "|---|---|---|---|---|"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        a = [r["auroc"] for r in rows if r["method"] == m]
        w = [r["wall"] for r in rows if r["method"] == m]
        sd = statistics.stdev(a) if len(a) > 1 else 0.0
        ref = f"{paper[m]:.3f}" if paper and m in paper else "-"
        out.append(f"| {m} | {len(a)} | {statistics.mean(a):.3f} ± {sd:.3f} | {ref} | {statistics.mean(w):.0f} |")
    return "\n".join(out)


def per_class(rows: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    classes = list(dict.fromkeys(r["cls"] for r in rows))
    out = ["| class | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for c in classes:
        cells = []
        for m in methods:
            a = [r["auroc"] for r in rows if r["method"] == m and r["cls"] == c]
            cells.append(f"{statistics.mean(a):.3f}" + (f" ± {statistics.stdev(a):.3f}" if len(a) > 1 else "")
                         if a else "-")
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(out)


P004_PAPER = {"fashion_mnist": {"rotnet_ae": 0.940, "cae": 0.923, "rotnet_score": 0.924},
              "mnist": {"rotnet_ae": 0.973, "cae": 0.926, "rotnet_score": 0.949}}


def p004(a) -> list[dict]:
    source = a.source if a.source == "fashion_mnist" else str(REPO.parent / "shared/data/mnist/mnist_5k.csv.gz")
    common = {"data.args.source": source, "models.model.args.patch": 28}
    if a.subset:
        common["data.train.normal.args.subset"] = a.subset
    if a.val_subset:
        common["data.val.args.subset"] = a.val_subset
    plans = {
        "rotnet_ae": ("rotnet_ae_fmnist.yaml", {"phases": [
            {"name": "rotnet", "epochs": a.epochs}, {"name": "decoders", "epochs": a.epochs, "lr": a.dec_lr,
                                                     "freeze": ["model.encoder"]}, {"name": "calibrate", "epochs": 0}],
            "models.model.args.width": a.width}),
        "cae": ("cae_fmnist.yaml", {"phases": [{"name": "train", "epochs": a.epochs},
                                               {"name": "calibrate", "epochs": 0}]}),
        "rotnet_score": ("rotnet_ae_score_fmnist.yaml", {"phases": [{"name": "rotnet", "epochs": a.epochs},
                                                                    {"name": "calibrate", "epochs": 0}],
                                                         "models.model.args.width": a.width}),
    }
    rows = []
    for cls in a.classes:
        for method in a.methods:
            file, extra = plans[method]
            for seed in a.seeds:
                auc, wall, _ = run(file, {**common, **extra, "data.args.normal": [cls]}, seed)
                rows.append({"method": method, "cls": cls, "seed": seed, "auroc": auc, "wall": wall,
                             "source": a.source})
                record(rows[-1])
    print(per_class(rows))
    print(summarise(rows, P004_PAPER.get(a.source if a.source == "fashion_mnist" else "mnist")))
    return rows


ABLATION = {  # paper 003, Table 1 rows: loss weights (w_irec, w_adv, w_zrec, w_c, w_dual) and the score used
    "irec+adv": ((1, 5, 0, 0, 0), "generator"),
    "+zrec": ((1, 5, 1, 0, 0), "generator"),
    "+c": ((1, 5, 1, 0.05, 0), "generator"),
    "+dual": ((1, 5, 1, 0.05, 1), "dual"),
}
P003_PAPER = {5: {"irec+adv": .59, "+zrec": .63, "+c": .65, "+dual": .99},
              3: {"irec+adv": .63, "+zrec": .68, "+c": .70, "+dual": .99}}


def p003_overrides(a, cls: int, weights: tuple, score: str) -> dict:
    """Recipe overrides of one paper-003 ablation row: the row's loss weights (k = 0.4) and score, G's side of
    L_dual (`--g-dual`), the class, width, epochs and subsets."""
    args = dict(zip(("w_irec", "w_adv", "w_zrec", "w_c", "w_dual"), map(float, weights)), k=0.4, g_dual=a.g_dual)
    ov = {"data.args.normal": [cls], "models.model.args.score": score, "models.model.args.width": a.width,
          "losses.adae.args": args,
          "phases": [{"name": "centre", "epochs": 0}, {"name": "train", "epochs": a.epochs},
                     {"name": "calibrate", "epochs": 0}]}
    if a.source == "fashion_mnist":
        ov["data.args.source"] = "fashion_mnist"
    if a.subset:
        ov["data.train.normal.args.subset"] = a.subset
    if a.val_subset:
        ov["data.val.args.subset"] = a.val_subset
    return ov


def p003(a) -> list[dict]:
    rows = []
    for cls in a.classes:
        for row, (w, score) in ABLATION.items():
            if a.methods and row not in a.methods:
                continue
            ov = p003_overrides(a, cls, w, score)
            # rows with L_dual under G's other reading are named apart ("+dual (G against)")
            name = f"{row} (G {a.g_dual})" if w[4] > 0 and a.g_dual != "help" else row
            also = tuple(sc for sc in a.also_score if sc != score)
            for seed in a.seeds:
                auc, wall, hist = run("dual_ae_mnist.yaml", ov, seed, rescore=also)
                rows.append({"method": name, "cls": cls, "seed": seed, "auroc": auc, "wall": wall,
                             "source": a.source, "paper": None if a.source == "fashion_mnist"
                             else P003_PAPER.get(cls, {}).get(row)})
                record(rows[-1])
                for sc in also:  # the same trained weights, read by another score
                    rows.append({**rows[-1], "method": f"{name} ({sc} score)", "auroc": hist[-1][f"val_auroc_{sc}"],
                                 "paper": None})
                    record(rows[-1])
    print(per_class(rows))
    print(summarise(rows))
    return rows


def pcd(a) -> list[dict]:
    rows = []
    files = {"cae": "cae_pcd_levir.yaml", "dual_ae": "dual_ae_pcd_levir.yaml", "rotnet_ae": "rotnet_ae_pcd_levir.yaml"}
    epochs = dict(zip(a.methods, a.method_epochs or [a.epochs] * len(a.methods)))
    for method in a.methods:
        for seed in a.seeds:
            ov = {"data.args.root": [str(Path(r).resolve()) for r in a.root]}
            key = {"cae": "train", "dual_ae": "train", "rotnet_ae": None}[method]
            if key:
                ov["phases"] = ([{"name": "centre", "epochs": 0}] if method == "dual_ae" else []) + [
                    {"name": "train", "epochs": epochs[method]}, {"name": "calibrate", "epochs": 0}]
            else:
                ov["phases"] = [{"name": "rotnet", "epochs": epochs[method]},
                                {"name": "decoders", "epochs": epochs[method], "lr": a.dec_lr,
                                 "freeze": ["model.encoder"]},
                                {"name": "calibrate", "epochs": 0}]
            auc, wall, _ = run(files[method], ov, seed)
            rows.append({"method": method, "cls": "pcd", "seed": seed, "auroc": auc, "wall": wall})
            record(rows[-1])
    print(summarise(rows))
    return rows


def self_trained(a) -> list[dict]:
    """Per pair, no labels at all: a CAE trained on the pair's own unchanged-looking windows (data kind
    pair_windows: the lowest `keep` share of its windows by a label-free screen, CVA by default; the mask is
    never read), then run on that same pair as detection runs it (`cdtool evaluate --model RUN/last.safetensors
    --pairs NAME`); CVA and PCA-kmeans on the same pair beside it. The masks only score the maps here.
    Rows: AUROC, F1 at the model's own threshold (calibrated 0.99; Otsu for CVA and PCA-kmeans), F1 at Otsu."""
    from cdtool.data.pair_folder import pair_names
    from cdtool.engine.evaluate import evaluate_model

    roots = [str(Path(r).resolve()) for r in a.root]
    names = a.pairs or pair_names(roots)
    rows = []
    for name in names:
        root = [r for r in roots if Path(r).name == name.split("/")[0]]
        for method in ("cva", "pca_kmeans"):
            t0 = time.time()
            own, _ = evaluate_model(method, root, pairs=[name], device=DEVICE)
            otsu, _ = evaluate_model(method, root, pairs=[name], threshold="otsu", device=DEVICE)
            rows.append({"method": method, "cls": name, "seed": None, "auroc": own["auroc"], "f1": own["f1"],
                         "f1_otsu": otsu["f1"], "wall": time.time() - t0})
            record(rows[-1])
        for seed in a.seeds:
            ov = {"data.args.roots": root, "data.args.pairs": [name], "data.args.patch": a.patch,
                  "data.args.stride": a.stride, "data.args.screen": a.screen, "data.args.keep": a.keep,
                  "models.model.args.patch": a.patch,
                  "phases": [{"name": "train", "epochs": a.epochs}, {"name": "calibrate", "epochs": 0}]}
            with tempfile.TemporaryDirectory() as tmp:
                _, wall, _ = run("cae_pair_self.yaml", ov, seed, keep=Path(tmp) / "run")
                ckpt = str(Path(tmp) / "run" / "last.safetensors")
                t0 = time.time()
                own, _ = evaluate_model(ckpt, root, pairs=[name], device=DEVICE)
                otsu, _ = evaluate_model(ckpt, root, pairs=[name], threshold="otsu", device=DEVICE)
                wall += time.time() - t0
            rows.append({"method": f"cae_self ({a.screen} screen)", "cls": name, "seed": seed, "auroc": own["auroc"],
                         "f1": own["f1"], "f1_otsu": otsu["f1"], "wall": wall})
            record(rows[-1])
    print(self_table(rows))
    return rows


def self_table(rows: list[dict]) -> str:
    """Per pair: AUROC, F1 (own threshold), F1 (Otsu) of each method, mean ± std over seeds; then the mean
    over pairs."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    pairs = list(dict.fromkeys(r["cls"] for r in rows))

    def cell(vals: list[float]) -> str:
        vals = [v for v in vals if v == v]
        if not vals:
            return "-"
        return f"{statistics.mean(vals):.3f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else "")

    head = " | ".join(f"{m} AUROC / F1 / F1 Otsu" for m in methods)
    out = [f"| pair | {head} |", "|---" * (len(methods) + 1) + "|"]
    for p in pairs + ["mean over pairs"]:
        cells = []
        for m in methods:
            sel = [r for r in rows if r["method"] == m and (r["cls"] == p or p == "mean over pairs")]
            if p == "mean over pairs":  # each pair's mean over seeds, then the mean over pairs
                per = {q: [r for r in sel if r["cls"] == q] for q in pairs}
                sel = [{k: statistics.mean(r[k] for r in v) for k in ("auroc", "f1", "f1_otsu")}
                       for v in per.values() if v]
            cells.append(" / ".join(cell([r[k] for r in sel]) for k in ("auroc", "f1", "f1_otsu")))
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def tables(a) -> list[dict]:
    """Merge the rows of several --json files (e.g. one per seed or per machine) and print the tables."""
    rows = [r for f in a.inputs for r in json.loads(Path(f).read_text())["rows"]]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        kind = ("self" if "f1_otsu" in r else "pcd" if r["cls"] == "pcd" else
                "p003" if r["method"].split(" (")[0] in ABLATION else "p004")
        groups.setdefault((kind, r.get("source")), []).append(r)
    for (kind, source), rs in groups.items():
        print(f"\n## {kind}{f' ({source})' if source else ''}: {len(rs)} rows")
        if kind == "self":
            print(self_table(rs))
            continue
        if kind in ("p003", "p004"):
            print(per_class(rs))
        print(summarise(rs, P004_PAPER.get(source) if kind == "p004" else None))
        seeds = sorted({r["seed"] for r in rs})
        if kind in ("p003", "p004") and len(seeds) > 1:  # the spread of the class-mean AUROC across seeds
            out = ["| method | class-mean AUROC per seed | mean ± std over seeds |", "|---|---|---|"]
            for m in dict.fromkeys(r["method"] for r in rs):
                per = [statistics.mean(r["auroc"] for r in rs if r["method"] == m and r["seed"] == s)
                       for s in seeds if any(r["method"] == m and r["seed"] == s for r in rs)]
                sd = statistics.stdev(per) if len(per) > 1 else 0.0
                out.append(f"| {m} | {', '.join(f'{v:.3f}' for v in per)} | {statistics.mean(per):.3f} ± {sd:.3f} |")
            print("\n".join(out))
    return rows


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", choices=["p004", "p003", "pcd", "self", "tables"])
    p.add_argument("--source", default=None, choices=["fashion_mnist", "mnist"],
                   help="fashion_mnist or mnist (the shared 5,000 digits); default: fashion_mnist for p004, "
                        "mnist for p003 (its Table 1 is on MNIST)")
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--method-epochs", type=int, nargs="+", default=None, help="pcd: epochs per method, in order")
    p.add_argument("--width", type=int, default=8, help="network width (rotnet_ae: 64 is the paper's ResNet-18)")
    p.add_argument("--subset", type=int, default=0, help="training images per run (0: all of the class)")
    p.add_argument("--val-subset", type=int, default=0, help="test images scored (0: the whole test set)")
    p.add_argument("--also-score", nargs="+", default=[], choices=["dual", "generator"],
                   help="p003: also score each trained model this way (dual_ae model arg score), from the same "
                        "weights; one more row per run, method 'ROW (SCORE score)'")
    p.add_argument("--g-dual", default="help", choices=["help", "against"],
                   help="p003: G's side of L_dual (adae loss arg g_dual): help (default, G wants D′ to reconstruct "
                        "G(x)) or against (eq. 1 literally: G minimises −w_d·k·‖G(x) − D′(G(x))‖₁)")
    p.add_argument("--dec-lr", type=float, default=0.0002, help="rotnet_ae stage-2 learning rate (paper: 2e-4)")
    p.add_argument("--root", nargs="+", default=["patches/pcd_levir"])
    p.add_argument("--pairs", nargs="+", default=None, help="self: pair names (default: every pair of --root)")
    p.add_argument("--patch", type=int, default=42, help="self: window side (the CAE's patch)")
    p.add_argument("--stride", type=int, default=7, help="self: training-window stride")
    p.add_argument("--screen", default="cva", help="self: label-free model that picks unchanged-looking windows")
    p.add_argument("--keep", type=float, default=0.5, help="self: share of a pair's windows kept as unchanged")
    p.add_argument("--inputs", nargs="+", default=[], help="tables: --json files to merge")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="training device (cpu, cuda, cuda:1)")
    p.add_argument("--json", default=None, help="also write the rows here, row by row as they are measured")
    a = p.parse_args(argv)
    if a.source is None:
        a.source = "mnist" if a.protocol == "p003" else "fashion_mnist"
    return a


def main(argv=None) -> None:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    global DEVICE, JSON_OUT
    DEVICE = a.device
    if a.protocol == "tables":
        tables(a)
        return
    JSON_OUT = Path(a.json) if a.json else None
    if a.methods is None:
        a.methods = {"p004": ["rotnet_ae", "cae", "rotnet_score"], "p003": list(ABLATION),
                     "pcd": ["cae", "dual_ae", "rotnet_ae"], "self": []}[a.protocol]
    {"p004": p004, "p003": p003, "pcd": pcd, "self": self_trained}[a.protocol](a)


if __name__ == "__main__":
    main()
