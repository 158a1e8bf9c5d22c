"""Paper 001 ablation, scaled to a CPU: F1 on the same misaligned test pairs and flow end-point error against
the simulated flow, for every recipe variant, per seed; plus CVA and a supervised FC-Siam on the same pairs.

    python benchmarks/flow_change_table.py --seeds 0 1 2 --fcsiam --cosimnet   # everything (prints each command)
    python benchmarks/flow_change_table.py --seeds 0 --rows simsac_full simsac_unsup
    python benchmarks/flow_change_table.py --table-only            # re-score existing runs

Data (built once, by the commands printed): the 13 LEVIR/DSIFN training pairs (the 2 validation and 6 test
pairs of recipes/fc_siam_diff.yaml left out) give (a) the labelled synthetic set, `cdtool patches synthetic`
of 400 64x64 pairs (train split 330), backgrounds and pasted objects from those 13 pairs only, and (b) the
unlabelled target pairs (kind `misaligned`, 104 random 64x64 crops per epoch, AFTER warped by a homography of
up to 4 px per corner plus a smooth local warp of up to 2 px, and photometrically changed). Test: 96 fixed
64x64 misaligned crops (sample_seed 2024) of the 6 test pairs, labels on AFTER's grid; val: 32 fixed crops
of the 2 validation pairs.

Each seed: `simsac_pretrain` (L_sup on synthetic pairs), then each ablation recipe's adapt epochs from its
last.safetensors; `--fcsiam` / `--cosimnet`: the supervised FC-Siam-diff / CosimNet trained with the labels of
the misaligned training crops. Scores: F1 at the checkpoint's threshold (the simsac recipes fix it at the
paper's 0.5; the supervised comparisons tune theirs on the validation crops), for the best-validation
checkpoint and for the last epoch, pooled over the test pixels, with AUROC beside it (threshold-free); EPE (px) of the detecting
decoders' flow (forward-backward symmetric, as `cdtool detect --flow` writes it; scores.json also holds the
one-way flow's, `epe_one_way`) against the simulated flow over valid pixels; and on identical dates (each test crop's BEFORE
as both dates) the share flagged at that threshold and the mean |flow|. Writes <out>/table.md and
<out>/scores.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
VAL = ["levir/test_102_0512_0000", "dsifn/0_2"]
TEST = ["levir/test_2_0000_0000", "levir/test_77_0512_0256", "levir/train_386_0512_0768", "dsifn/2_4", "dsifn/5_3",
        "dsifn/8_3"]
ROWS = [("simsac_sup", "synthetic only (L_sup)"), ("simsac_feat", "+ l_feat"), ("simsac_feat_cr", "+ l_feat + l_cr"),
        ("simsac_feat_sm", "+ l_feat + l_sm"), ("simsac_unsup", "+ L_unsup (l_feat + l_cr + l_sm)"),
        ("simsac_dist", "+ L_dist alone (separate)"), ("simsac_full", "full method (separate decoders)"),
        ("simsac_full_shared", "full method, shared decoders")]


def run(cmd: list[str], log: Path) -> float:
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    if cmd[0] == "cdtool":  # this checkout's cdtool, whichever one the console script points at
        cmd = [sys.executable, "-m", "cdtool.cli", *cmd[1:]]
    t0 = time.time()
    with open(log, "w") as fh:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": "1",
                            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    return time.time() - t0


def make_data() -> None:
    src = ROOT / "patches" / "simsac_src"
    if not (src / "A").is_dir():
        for sub in ("A", "B", "label"):
            (src / sub).mkdir(parents=True, exist_ok=True)
        for ds in ("levir", "dsifn"):
            for f in sorted((SHARED / ds / "A").glob("*.png")):
                if f"{ds}/{f.stem}" in VAL + TEST:
                    continue
                for sub in ("A", "B", "label"):
                    link = src / sub / f"{ds}_{f.name}"
                    if not link.exists():
                        link.symlink_to((SHARED / ds / sub / f.name).resolve())
    if not (ROOT / SYNTH / "dataset.json").is_file():
        make_synthetic_set()


SYNTH = "patches/simsac_synth64m"


def make_synthetic_set() -> None:
    """The labelled synthetic set, displacements matched to the target's few pixels (rotation <= 3 deg, scale
    <= 5 %, shift <= 4 px, against the patches defaults 10 deg, 10 %, 16 px), 20 % no-change pairs
    (identical, or a global radiometric change; zero flow), and 16 px of real context around each crop so
    that AFTER has no empty border (whose width would give the shift away)."""
    run(["cdtool", "patches", "synthetic", "patches/simsac_src/A", "--objects", "patches/simsac_src",
         "--samples", "400", "--size", "64", "--max-rotation", "3", "--max-scale", "0.05", "--max-shift", "4",
         "--still", "0.2", "--margin", "16", "-o", SYNTH], Path("/tmp/simsac_synth.log"))


def test_set(samples: int = 96):
    from cdtool.data.misaligned import MisalignedDataset

    return MisalignedDataset([str(SHARED / "levir"), str(SHARED / "dsifn")], pairs=TEST, crop=64, samples=samples,
                             seed=2024, fixed=True)


def _load(path: Path):
    from cdtool.io.checkpoint import load_checkpoint
    from cdtool.models.registry import create_model

    states, meta = load_checkpoint(path)
    model = create_model(meta.model.name, **meta.model.args)
    model.load_state_dict(states["model"])
    return model.eval(), meta


def _f1(prob: np.ndarray, truth: np.ndarray, valid: np.ndarray, thr: float) -> tuple[float, float, float]:
    p, t = prob[valid] >= thr, truth[valid] > 0.5
    tp, fp, fn = float((p & t).sum()), float((p & ~t).sum()), float((~p & t).sum())
    prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return 2 * prec * rec / max(prec + rec, 1e-12), prec, rec


def _oracle_f1(prob: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    """F1 at the best threshold on the test pixels themselves (1024 bins): an upper bound, not a result."""
    from cdtool.metrics import best_threshold

    p, t = prob[valid], truth[valid] > 0.5
    pos = np.histogram(p[t], 1024, (0, 1))[0]
    neg = np.histogram(p[~t], 1024, (0, 1))[0]
    return best_threshold(pos, neg)[1]


def _auroc(prob: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    from cdtool.metrics import BinaryMetrics

    m = BinaryMetrics()
    m.update(prob >= 0.5, truth > 0.5, valid, scores=prob)
    return float(m.auroc())


def _batches(data):
    from cdtool.normalization import normalize_stack

    for i in range(0, len(data), 16):
        items = [data[j] for j in range(i, min(i + 16, len(data)))]
        img = torch.stack([s["image"] for s in items])
        x = normalize_stack(img, {"mode": "per-image"})
        yield (x[:, 0], x[:, 1], torch.stack([s["mask"] for s in items]), torch.stack([s["valid"] for s in items]),
               torch.stack([s["flow"] for s in items]))


def score_simsac(path: Path, data) -> dict:
    model, meta = _load(path)
    probs, truths, valids, epes, ws, epes1 = [], [], [], [], [], []
    with torch.no_grad():
        for b, a, m, v, f in _batches(data):
            out = model.predict(b, a)
            probs.append(torch.sigmoid(out["logit"]).numpy())
            truths.append(m.numpy())
            valids.append(v.numpy())
            d = (out["flow"] - f).norm(dim=1, keepdim=True)
            epes.append(float((d * v).sum()))
            ws.append(float(v.sum()))
            one = (out["flow_one_way"] - f).norm(dim=1, keepdim=True)
            epes1.append(float((one * v).sum()))
    prob, truth, valid = np.concatenate(probs), np.concatenate(truths), np.concatenate(valids).astype(bool)
    thr = float(meta.threshold)
    f1, prec, rec = _f1(prob, truth, valid, thr)
    flagged, mag = identical(model, data, thr, flow=True)
    return {"f1": f1, "precision": prec, "recall": rec, "auroc": _auroc(prob, truth, valid), "threshold": thr,
            "f1_oracle": _oracle_f1(prob, truth, valid),
            "epe": sum(epes) / max(sum(ws), 1), "epe_one_way": sum(epes1) / max(sum(ws), 1),
            "epoch": meta.epoch, "identical_flagged": flagged,
            "identical_flow": mag}


def identical(model, data, thr: float, flow: bool = False) -> tuple[float, float | None]:
    """Each test crop's BEFORE as both dates: the share of pixels flagged at `thr`, and the mean |flow| (px)."""
    flagged, mags, n = 0.0, 0.0, 0
    with torch.no_grad():
        for b, _, _, _, _ in _batches(data):
            prob = model(b, b)
            flagged += float((prob >= thr).float().sum())
            n += prob.numel()
            if flow:
                mags += float(model.forward_flow(b, b).norm(dim=1).sum())
    return flagged / n, (mags / n if flow else None)


def zero_flow_epe(data) -> float:
    tot, n = 0.0, 0.0
    for _, _, _, v, f in _batches(data):
        tot += float((f.norm(dim=1, keepdim=True) * v).sum())
        n += float(v.sum())
    return tot / n


def _otsu(x: np.ndarray) -> float:
    hist, edges = np.histogram(x, 256, (0, 1))
    p = hist / max(hist.sum(), 1)
    c = 0.5 * (edges[:-1] + edges[1:])
    w0, mu = np.cumsum(p), np.cumsum(p * c)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return float(c[int(np.argmax(between[:-1]))])


def score_cva(data) -> dict:
    """CVA (3x3 neighbourhood, noise floor) per test crop, Otsu's threshold per crop as `detect` does per image."""
    from cdtool.models.registry import create_model

    model = create_model("cva").eval()
    tp = fp = fn = 0.0
    probs, truths, valids = [], [], []
    with torch.no_grad():
        for b, a, m, v, _ in _batches(data):
            s = model(b, a).numpy()
            for k in range(len(s)):
                vk = v[k].numpy().astype(bool)
                pred = s[k] >= _otsu(s[k][vk])
                t = m[k].numpy() > 0.5
                tp += float((pred & t & vk).sum()); fp += float((pred & ~t & vk).sum()); fn += float((~pred & t & vk).sum())
            probs.append(s); truths.append(m.numpy()); valids.append(v.numpy())
    prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    prob, truth, valid = np.concatenate(probs), np.concatenate(truths), np.concatenate(valids).astype(bool)
    return {"f1": 2 * prec * rec / max(prec + rec, 1e-12), "precision": prec, "recall": rec,
            "auroc": _auroc(prob, truth, valid)}


def score_dense(path: Path, data) -> dict:
    """A plain dense checkpoint (FC-Siam) on the test crops at its tuned threshold."""
    model, meta = _load(path)
    probs, truths, valids = [], [], []
    with torch.no_grad():
        for b, a, m, v, _ in _batches(data):
            probs.append(model(b, a).numpy()); truths.append(m.numpy()); valids.append(v.numpy())
    prob, truth, valid = np.concatenate(probs), np.concatenate(truths), np.concatenate(valids).astype(bool)
    thr = float(meta.threshold)
    f1, prec, rec = _f1(prob, truth, valid, thr)
    return {"f1": f1, "precision": prec, "recall": rec, "auroc": _auroc(prob, truth, valid), "threshold": thr,
            "f1_oracle": _oracle_f1(prob, truth, valid),
            "identical_flagged": identical(model, data, thr)[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rows", nargs="+", default=[r for r, _ in ROWS])
    ap.add_argument("--out", default="runs/flow_change_table")
    ap.add_argument("--fcsiam", action="store_true", help="also train the supervised FC-Siam on misaligned pairs")
    ap.add_argument("--cosimnet", action="store_true", help="also train the supervised CosimNet on misaligned pairs")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--data-only", action="store_true", help="make the training pairs (patches/) and stop")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = ROOT / a.out
    out.mkdir(parents=True, exist_ok=True)
    times_file = out / "times.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    for f in sorted(out.glob("times_s*.json")):
        times.update(json.loads(f.read_text()))
    if not a.table_only:
        make_data()
    if a.data_only:
        return
    for s in a.seeds:
        pre = out / f"simsac_pretrain_s{s}"
        jobs = [("simsac_pretrain", pre, ["cdtool", "train", "recipes/simsac_pretrain.yaml", "--set", f"seed={s}",
                                          "--out", str(pre.relative_to(ROOT))])]
        for r in a.rows:
            d = out / f"{r}_s{s}"
            jobs.append((r, d, ["cdtool", "train", f"recipes/{r}.yaml", "--set", f"seed={s}", "--set",
                                f"models.model.init={(pre / 'last.safetensors').relative_to(ROOT)}",
                                "--out", str(d.relative_to(ROOT))]))
        for flag, r in ((a.fcsiam, "simsac_fcsiam"), (a.cosimnet, "simsac_cosimnet")):
            if flag:
                d = out / f"{r}_s{s}"
                jobs.append((r, d, ["cdtool", "train", f"recipes/{r}.yaml", "--set", f"seed={s}",
                                    "--out", str(d.relative_to(ROOT))]))
        for name, d, cmd in jobs:
            if a.table_only or (d / "last.safetensors").is_file():
                continue
            entry = {"seconds": round(run(cmd, out / f"{name}_s{s}.log"), 1), "command": " ".join(cmd)}
            per_seed = out / f"times_s{s}.json"  # one file per seed: seeds may run in parallel processes
            mine = json.loads(per_seed.read_text()) if per_seed.is_file() else {}
            mine[f"{name}_s{s}"] = times[f"{name}_s{s}"] = entry
            per_seed.write_text(json.dumps(mine, indent=1))
    data = test_set()
    pos = [float((d["mask"][d["valid"]] > 0.5).float().mean()) for d in (data[i] for i in range(len(data)))]
    share = float(np.mean(pos))  # (crops have equal sizes; valid areas differ little)
    scores: dict = {"zero_flow_epe": zero_flow_epe(data), "cva": score_cva(data), "rows": {},
                    "changed_share": share, "all_changed_f1": 2 * share / (1 + share)}
    names = [("simsac_pretrain", "pretrain checkpoint (synthetic only, no adapt epochs)")] + \
        [(r, lab) for r, lab in ROWS if r in a.rows] + \
        [("simsac_fcsiam", "FC-Siam-diff, supervised on misaligned target pairs"),
         ("simsac_cosimnet", "CosimNet, supervised on misaligned target pairs")]
    for r, _ in names:
        for s in a.seeds:
            d = out / f"{r}_s{s}"
            if not (d / "last.safetensors").is_file():
                continue
            fn = score_dense if r in ("simsac_fcsiam", "simsac_cosimnet") else score_simsac
            scores["rows"].setdefault(r, {})[s] = {"best": fn(d / "best.safetensors", data),
                                                   "last": fn(d / "last.safetensors", data),
                                                   "seconds": times.get(f"{r}_s{s}", {}).get("seconds")}
    (out / "scores.json").write_text(json.dumps(scores, indent=1))

    def ms(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        return f"{np.mean(vals):.3f}" + (f" ± {np.std(vals):.3f}" if len(vals) > 1 else "")

    lines = ["| configuration | recipe | seeds | threshold | F1 (best val) | AUROC (best val) | F1 (last) | AUROC (last) | "
             "F1 at the test-best threshold (last; upper bound) | flow EPE px (last) | identical dates: flagged / "
             "mean flow px (last) | wall s / run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| CVA (Otsu per crop) | `cva` | - | Otsu | {scores['cva']['f1']:.3f} | {scores['cva']['auroc']:.3f} | - | - "
             f"| - | {scores['zero_flow_epe']:.3f} (zero flow) | - | - |"]
    lines.append(f"| every pixel 'changed' (reference) | - | - | 0 | {scores['all_changed_f1']:.3f} | 0.500 | - | - | - "
                 "| - | - | - |")
    for r, lab in names:
        per = scores["rows"].get(r)
        if not per:
            continue
        v = list(per.values())
        epe = ms([x["last"].get("epe") for x in v]) if "epe" in v[0]["last"] else "-"
        ident = ms([100 * x["last"]["identical_flagged"] for x in v]) + " %"
        if "identical_flow" in v[0]["last"]:
            ident += " / " + ms([x["last"]["identical_flow"] for x in v])
        thr = ms([x["last"]["threshold"] for x in v])
        lines.append(f"| {lab} | `{r}` | {len(v)} | {thr} | {ms([x['best']['f1'] for x in v])} | "
                     f"{ms([x['best']['auroc'] for x in v])} | {ms([x['last']['f1'] for x in v])} | "
                     f"{ms([x['last']['auroc'] for x in v])} | {ms([x['last']['f1_oracle'] for x in v])} | {epe} | "
                     f"{ident} | {ms([x['seconds'] for x in v])} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
