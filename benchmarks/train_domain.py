"""Train a domain's learned default (siam_diff_unet) with scene-level cross-validation, then on every scene.

    python benchmarks/domain_data.py --out .domain_data --sources levir dsifn egy_bcd beijing   # needs rasterio
    python benchmarks/domain_data.py --out .domain_data13 --sources oscd --bands all
    python benchmarks/train_domain.py --domain vhr --data .domain_data --out runs/vhr --folds 5 --steps 900
    python benchmarks/train_domain.py --domain s2 --data .domain_data13 --out runs/s2 --folds 5 --steps 900
    python benchmarks/domain_table.py --cv runs/vhr ...      # each scene scored by the fold that left it out

A domain is a band layout and a GSD range: `vhr` (RGB, 0.25-2 m: LEVIR, DSIFN, EGY-BCD, INLPG Beijing) and
`s2` (Sentinel-2, the 12 bands other than B10: every OSCD city). Scenes are split into `--folds` groups (each source's scenes
dealt round-robin, so every fold sees every source); fold k's model trains on the other groups and is
validated on its own every `--eval-every` steps (the curve goes into summary.json; the schedule is fixed, no
step is picked on a validation score). Each fold model's threshold is the one with the best mean per-scene
F1 over the *other* folds' held-out scenes, so the cross-validated table never thresholds a scene with its
own labels; `all.safetensors` trains on every scene for the same steps and takes the threshold that is best
over all held-out scenes. Needs only torch, numpy and safetensors, so it runs on a bare GPU machine.

Augmentation draws what a user's pair brings and the sources lack: scale (resampled inside the domain's
range), per-date gain/offset residue, gamma-like curves, band mixing (season-like colour shifts), spatially
smooth haze, blur and noise, up to 2 px of misregistration (1 px at Sentinel-2's 10 m), date swaps, flips and quarter turns, and
unchanged pairs made from one image with independent jitter (mask all unchanged). Inputs are standardised
per date and band over the whole image, as detection does.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdtool.io.checkpoint import save_checkpoint  # noqa: E402
from cdtool.models.registry import create_model  # noqa: E402

IGNORE = 255
RGB = ("red", "green", "blue")
BINS = 200
# Sentinel-2 without B10 (cirrus, 1375 nm: no surface signal, and absent from L2A products), so one model
# serves L1C and L2A inputs alike.
S2_FILE_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
S2_BANDS = [b for b in S2_FILE_BANDS if b != "B10"]


@dataclass(frozen=True)
class Domain:
    files: tuple[str, ...]  # npz files from benchmarks/domain_data.py
    file_bands: tuple[str, ...]  # the bands those files hold, in order
    layout: str
    band_names: tuple[str, ...]
    scale: tuple[float, float]  # crops resampled to this range of their source's GSD
    change: str
    shift_px: float = 2.0  # the most misregistration drawn for AFTER, in pixels


DOMAINS = {
    "vhr": Domain(("levir.npz", "dsifn.npz", "egy_bcd.npz", "beijing.npz"), RGB, "rgb", RGB,
                  (0.5, 2.0), "buildings (LEVIR, EGY-BCD) and urban land cover (DSIFN, Beijing): new, "
                              "demolished, changed use; season and lighting labelled unchanged"),
    "s2": Domain(("oscd_all.npz",), tuple(S2_FILE_BANDS), "sentinel2", tuple(S2_BANDS), (0.8, 1.25),
                 "urban change (OSCD: new buildings, roads, cleared sites); water, crops and season are "
                 "labelled unchanged", shift_px=1.0),  # 2 px is 20 m: as large as many OSCD changes
}


class Pair:
    """One labelled scene on the device: standardised dates (2, C, H, W), mask (H, W) float, known (H, W)."""

    def __init__(self, source: str, name: str, before: np.ndarray, after: np.ndarray, mask: np.ndarray,
                 gsd: float, device):
        self.source, self.name, self.gsd = source, name, gsd
        x = torch.from_numpy(np.stack([before, after]).astype(np.float32))
        flat = x.flatten(2)
        mean, std = flat.mean(-1), flat.std(-1).clamp_min(1e-6)
        self.x = ((x - mean[..., None, None]) / std[..., None, None]).to(device)
        self.mask = torch.from_numpy((mask == 1).astype(np.float32)).to(device)
        self.known = torch.from_numpy(mask != IGNORE).float().to(device)

    @property
    def scene(self) -> str:
        return f"{self.source}/{self.name}"


def load_scenes(root: Path, domain: Domain, device) -> list[Pair]:
    out = []
    for file in domain.files:
        z = np.load(root / file, allow_pickle=False)
        source = file.removesuffix(".npz").removesuffix("_all")
        keep = [domain.file_bands.index(b) for b in domain.band_names]
        for i, name in enumerate(z["names"]):
            if z[f"before_{i}"].shape[0] != len(domain.file_bands):
                raise SystemExit(f"{file}: {z[f'before_{i}'].shape[0]} bands, expected {len(domain.file_bands)}")
            out.append(Pair(source, str(name), z[f"before_{i}"][keep], z[f"after_{i}"][keep], z[f"mask_{i}"],
                            float(z["gsd"]), device))
    return out


def assign_folds(scenes: list[Pair], k: int, seed: int) -> dict[str, int]:
    """Scene -> fold: each source's scenes shuffled and dealt round-robin, continuing across sources, so the
    folds are balanced and each sees every source it can."""
    rng = np.random.default_rng(seed)
    out, nxt = {}, 0
    for source in dict.fromkeys(p.source for p in scenes):
        names = [p.scene for p in scenes if p.source == source]
        for name in rng.permutation(names):
            out[str(name)] = nxt % k
            nxt += 1
    return out


def _smooth_field(n: int, size: int, device, g: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(n, 1, 4, 4, device=device, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(2 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Photometric change of one date (B, C, H, W) that the per-image standardisation does not undo."""
    b, c, h, w = x.shape
    dev = x.device
    rnd = lambda *s: torch.rand(*s, device=dev, generator=g)  # noqa: E731
    mix = torch.eye(c, device=dev) + 0.08 * math.sqrt(3 / c) * torch.randn(b, c, c, device=dev, generator=g)
    x = torch.einsum("bij,bjhw->bihw", mix, x)
    curve = (rnd(b, c, 1, 1) - 0.5) * 0.6  # gamma-like bend
    x = x + curve * (x * x - 1.0) / 2
    gain, offset = 0.8 + 0.45 * rnd(b, c, 1, 1), (rnd(b, c, 1, 1) - 0.5) * 0.4
    x = x * gain + offset
    haze = 0.3 * rnd(b, 1, 1, 1) * (rnd(b, 1, 1, 1) < 0.4)
    x = x * (1 - haze) + haze * (1.0 + _smooth_field(b, h, dev, g))
    if float(rnd(1)) < 0.3:
        x = _blur(x, 0.5 + 0.7 * float(rnd(1)))
    return x + 0.08 * rnd(b, 1, 1, 1) * torch.randn(x.shape, device=dev, generator=g)


def shift(x: torch.Tensor, max_px: float, g: torch.Generator) -> torch.Tensor:
    """Misregistration: a random sub-pixel translation and a small rotation of (B, C, H, W)."""
    b, _, h, w = x.shape
    dev = x.device
    t = (torch.rand(b, 2, device=dev, generator=g) * 2 - 1) * max_px * 2 / torch.tensor([w, h], device=dev)
    a = (torch.rand(b, device=dev, generator=g) * 2 - 1) * math.radians(1.0)
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), t[:, 0]], 1), torch.stack([a.sin(), a.cos(), t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def sample_batch(scenes: list[Pair], batch: int, crop: int, scale: tuple[float, float], g: torch.Generator,
                 shift_px: float = 2.0, unchanged_p: float = 0.25):
    """(x (B, 2, C, crop, crop), mask, known); sources are drawn equally often, scenes within a source too."""
    by_source: dict[str, list[Pair]] = {}
    for p in scenes:
        by_source.setdefault(p.source, []).append(p)
    groups = list(by_source.values())
    xs, ms, ks = [], [], []
    rnd = lambda: float(torch.rand(1, generator=g, device=g.device))  # noqa: E731
    for _ in range(batch):
        pairs = groups[int(rnd() * len(groups))]
        p = pairs[int(rnd() * len(pairs))]
        h, w = p.mask.shape
        lo, hi = scale[0], max(scale[0], min(scale[1], min(h, w) / crop))
        k = math.exp(math.log(lo) + rnd() * (math.log(hi) - math.log(lo)))
        side = max(8, min(int(round(crop * k)), h, w))
        r, c = int(rnd() * (h - side + 1)), int(rnd() * (w - side + 1))
        x = p.x[:, :, r:r + side, c:c + side]
        m = torch.stack([p.mask[r:r + side, c:c + side], p.known[r:r + side, c:c + side]])[None]
        if side != crop:
            x = F.interpolate(x, size=(crop, crop), mode="bilinear", align_corners=False, antialias=side > crop)
            m = F.interpolate(m, size=(crop, crop), mode="bilinear", align_corners=False)
        mask, known = (m[0, 0] > 0.5).float(), (m[0, 1] > 0.999).float()
        if rnd() < unchanged_p:  # an unchanged pair made from one image
            x = torch.stack([x[0], x[0]]) if rnd() < 0.5 else torch.stack([x[1], x[1]])
            mask, known = torch.zeros_like(mask), torch.ones_like(known)
        if rnd() < 0.5:
            x = x.flip(0)
        kq = int(rnd() * 4)
        x, mask, known = (torch.rot90(t, kq, dims=(-2, -1)) for t in (x, mask, known))
        if rnd() < 0.5:
            x, mask, known = x.flip(-1), mask.flip(-1), known.flip(-1)
        xs.append(x)
        ms.append(mask)
        ks.append(known)
    x = torch.stack(xs)  # (B, 2, C, H, W)
    before, after = jitter(x[:, 0], g), jitter(x[:, 1], g)
    after = shift(after, shift_px, g)
    return torch.stack([before, after], 1), torch.stack(ms)[:, None], torch.stack(ks)[:, None]


def loss_fn(logits: torch.Tensor, mask: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none", pos_weight=torch.tensor(2.0, device=logits.device))
    bce = (bce * known).sum() / known.sum().clamp_min(1.0)
    p = torch.sigmoid(logits) * known
    dice = 1 - (2 * (p * mask).sum() + 1) / (p.sum() + (mask * known).sum() + 1)
    return bce + 0.5 * dice


@torch.no_grad()
def scene_histograms(model, scenes: list[Pair]) -> dict[str, np.ndarray]:
    """Scene -> (2, BINS) counts of changed and unchanged known pixels per score bin, the whole scene scored at
    once (zero-padded to the U-Net's multiple of 8)."""
    model.eval()
    out = {}
    for p in scenes:
        x = p.x[None]
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        xb = F.pad(x[:, 0], (0, pw, 0, ph), mode="replicate")
        xa = F.pad(x[:, 1], (0, pw, 0, ph), mode="replicate")
        s = model(xb, xa)[0, 0, :h, :w].float().cpu()
        kn, m = p.known.cpu() > 0, p.mask.cpu() > 0
        idx = (s * BINS).long().clamp(0, BINS - 1)
        out[p.scene] = np.stack([torch.bincount(idx[kn & m], minlength=BINS).numpy(),
                                 torch.bincount(idx[kn & ~m], minlength=BINS).numpy()]).astype(np.int64)
    model.train()
    return out


def f1_curve(hist: np.ndarray) -> np.ndarray:
    """F1 at each candidate threshold (bin edge t/BINS: scores >= it are changed) from (2, BINS) counts."""
    tp = hist[0][::-1].cumsum()[::-1]
    fp = hist[1][::-1].cumsum()[::-1]
    fn = hist[0].sum() - tp
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def mean_scene_f1(hists: dict[str, np.ndarray]) -> np.ndarray:
    """Mean over scenes with any change of each scene's F1, at every candidate threshold."""
    curves = [f1_curve(h) for h in hists.values() if h[0].sum() > 0]
    return np.mean(curves, 0) if curves else np.zeros(BINS)


def best_threshold(hists: dict[str, np.ndarray], floor: float) -> tuple[float, float]:
    """The candidate threshold with the best mean per-scene F1, never below `floor`."""
    f1 = mean_scene_f1(hists)
    f1[np.arange(BINS) / BINS < floor] = -1
    i = int(f1.argmax())
    return i / BINS, float(f1[i])


def identical_floor(model) -> float:
    """Identical dates score sigmoid(bias) everywhere; a threshold stays 0.05 above it."""
    return float(torch.sigmoid(model.bias.detach().float().cpu())) + 0.05


def train_one(train: list[Pair], val: list[Pair], dom: Domain, a, log) -> tuple:
    """Train one model for a.steps; with `val`, its held-out curve every a.eval_every steps."""
    torch.manual_seed(a.seed)
    device = train[0].x.device
    g = torch.Generator(device=device).manual_seed(a.seed)
    model = create_model("siam_diff_unet", in_channels=len(dom.band_names), width=a.width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.1)
    amp = device.type == "cuda"
    curve, losses, t0 = [], [], time.time()
    for step in range(1, a.steps + 1):
        x, mask, known = sample_batch(train, a.batch, a.crop, dom.scale, g, dom.shift_px)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model.forward_train(x[:, 0], x[:, 1])["logits"][0]
        loss = loss_fn(logits, mask, known)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % a.eval_every == 0 or step == a.steps:
            point = {"step": step, "seconds": round(time.time() - t0, 1), "loss": round(float(np.mean(losses)), 4)}
            losses = []
            if val:
                point["val_best_mean_f1"] = round(float(mean_scene_f1(scene_histograms(model, val)).max()), 4)
            curve.append(point)
            log(f"  step {step}/{a.steps} " + " ".join(f"{k} {v}" for k, v in point.items() if k != "step"))
    return model.eval(), curve, time.time() - t0


def card(dom: Domain, scenes: list[Pair], note: str) -> dict:
    gsds = sorted({p.gsd for p in scenes})
    sources = {}
    for p in scenes:
        sources.setdefault(p.source, []).append(p)
    return {"layout": dom.layout, "band_count": len(dom.band_names), "band_names": list(dom.band_names),
            "value_range": "any (each date standardised per band over the image)",
            "gsd_m": [min(gsds) * dom.scale[0], max(gsds) * dom.scale[1]], "usable_gsd_m": None,
            "change": dom.change,
            "data": note + ": " + ", ".join(f"{s} ({len(v)} scenes, {v[0].gsd:g} m)" for s, v in sources.items()),
            "recipe": "benchmarks/train_domain.py"}


def meta_for(dom: Domain, a, threshold: float, card_: dict, train: dict) -> dict:
    return {"model": {"name": "siam_diff_unet", "args": {"in_channels": len(dom.band_names), "width": a.width}},
            "normalization": {"mode": "per-image"}, "threshold": threshold, "bands": list(dom.band_names),
            "card": card_, "train": train}


def cross_validate(scenes: list[Pair], dom: Domain, a, log) -> dict:
    """Train one model per fold; return their states, curves and held-out histograms."""
    folds = assign_folds(scenes, a.folds, a.seed)
    runs = {}
    for k in range(a.folds):
        held = [p for p in scenes if folds[p.scene] == k]
        train = [p for p in scenes if folds[p.scene] != k]
        log(f"fold {k}: {len(train)} scenes to train, held out: {', '.join(p.scene for p in held)}")
        model, curve, secs = train_one(train, held, dom, a, log)
        runs[k] = {"model": model, "curve": curve, "seconds": secs, "held": [p.scene for p in held],
                   "hists": scene_histograms(model, held), "train": train}
    return {"folds": folds, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", choices=sorted(DOMAINS), required=True)
    ap.add_argument("--data", type=Path, default=Path(".domain_data"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--no-all", action="store_true", help="cross-validate only")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, help="CPU threads (one per process beats two on a busy machine)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dom = DOMAINS[a.domain]
    a.out.mkdir(parents=True, exist_ok=True)
    logf = (a.out / "train.log").open("a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    scenes = load_scenes(a.data, dom, torch.device(a.device))
    log(f"{a.domain}: {len(scenes)} scenes; {a.folds} folds x {a.steps} steps of {a.batch} x {a.crop}^2")
    hp = {k: getattr(a, k) for k in ("steps", "batch", "crop", "lr", "width", "seed", "device")}
    summary = {"domain": a.domain, "settings": hp, "folds": {}}
    cv = cross_validate(scenes, dom, a, log)
    oof = {s: h for r in cv["runs"].values() for s, h in r["hists"].items()}
    for k, r in cv["runs"].items():
        others = {s: h for s, h in oof.items() if s not in r["held"]}
        thr, f1_other = best_threshold(others, identical_floor(r["model"]))
        held = {s: oof[s] for s in r["held"]}
        per_scene = {s: round(float(f1_curve(h)[int(round(thr * BINS))]), 4) for s, h in held.items() if h[0].sum()}
        train = hp | {"seconds": round(r["seconds"], 1), "fold": k, "held_out": r["held"], "curve": r["curve"],
                      "threshold_from": "best mean per-scene F1 over the other folds' held-out scenes"}
        save_checkpoint(a.out / f"fold{k}.safetensors", {"model": r["model"].state_dict()},
                        meta_for(dom, a, thr, card(dom, r["train"], f"fold {k} of {a.folds}"), train))
        summary["folds"][k] = {"threshold": thr, "held_out_f1": per_scene, "seconds": round(r["seconds"], 1),
                               "curve": r["curve"]}
        log(f"fold {k}: threshold {thr:.3f} (other folds' mean F1 {f1_other:.3f}); held out "
            + ", ".join(f"{s} {v:.3f}" for s, v in per_scene.items()))
    summary["scene_fold"] = {s: f"fold{k}.safetensors" for s, k in cv["folds"].items()}
    thr_all, f1_oof = best_threshold(oof, 0.0)
    summary["oof_mean_f1_at_best"] = round(f1_oof, 4)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))  # the folds can be scored already
    if not a.no_all:
        log(f"all: {len(scenes)} scenes")
        model, curve, secs = train_one(scenes, [], dom, a, log)
        thr_all = max(thr_all, identical_floor(model))
        train = hp | {"seconds": round(secs, 1), "curve": curve,
                      "threshold_from": "best mean per-scene F1 over all folds' held-out scenes"}
        save_checkpoint(a.out / "all.safetensors", {"model": model.state_dict()},
                        meta_for(dom, a, thr_all, card(dom, scenes, "every scene"), train))
        summary["all"] = {"threshold": thr_all, "seconds": round(secs, 1)}
        log(f"all: threshold {thr_all:.3f}, {secs:.0f}s")
    summary["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
