"""Train the shipped default (siam_diff_unet) on every labelled source, and its leave-one-source-out twins.

    python benchmarks/domain_data.py --out .domain_data                  # once, needs rasterio
    python benchmarks/train_default.py --data .domain_data --out runs/default --steps 4000 --folds
    python benchmarks/domain_table.py --models runs/default/all.safetensors --loso runs/default ...

Needs only torch, numpy and safetensors, so it runs on a bare GPU machine. Each run writes
`<name>.safetensors`, a checkpoint with a card (bands, value range, effective GSDs, change, data) that
`cdtool detect --model` and `cdtool info` read. `--folds` trains one model per left-out source
(`<source>.safetensors`, trained on the others) and one on all (`all.safetensors`).

Augmentation draws what a user's pair brings and the sources lack: scale (each crop resampled to 0.5-4x
its source's GSD), per-date gain/offset residue, gamma-like curves, channel mixing (season-like colour
shifts), spatially smooth haze, blur and noise, up to 2 px of misregistration, date swaps, flips and
quarter turns, and unchanged pairs made from one image with independent jitter (mask all unchanged).
Inputs are standardised per date and band over the whole image, as detection does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdtool.io.checkpoint import save_checkpoint  # noqa: E402
from cdtool.models.registry import create_model  # noqa: E402

SOURCES = ("levir", "dsifn", "oscd_train", "oscd_test", "nanjing")
CHANGE = {"levir": "buildings", "dsifn": "urban land cover", "oscd_train": "urban", "oscd_test": "urban",
          "nanjing": "land cover"}
IGNORE = 255


class Pair:
    """One labelled pair on the device: standardised dates (2, C, H, W), mask (H, W) float, known (H, W)."""

    def __init__(self, before: np.ndarray, after: np.ndarray, mask: np.ndarray, gsd: float, device):
        x = torch.from_numpy(np.stack([before, after]).astype(np.float32))
        known = torch.from_numpy(mask != IGNORE)
        flat = x.flatten(2)
        mean, std = flat.mean(-1), flat.std(-1).clamp_min(1e-6)
        self.x = ((x - mean[..., None, None]) / std[..., None, None]).to(device)
        self.mask = torch.from_numpy((mask == 1).astype(np.float32)).to(device)
        self.known = known.float().to(device)
        self.gsd = gsd


def load_sources(root: Path, names: list[str], device) -> dict[str, list[Pair]]:
    out = {}
    for name in names:
        z = np.load(root / f"{name}.npz", allow_pickle=False)
        n = len(z["names"])
        out[name] = [Pair(z[f"before_{i}"], z[f"after_{i}"], z[f"mask_{i}"], float(z["gsd"]), device)
                     for i in range(n)]
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
    mix = torch.eye(c, device=dev) + 0.08 * torch.randn(b, c, c, device=dev, generator=g)
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


def sample_batch(sources: dict[str, list[Pair]], batch: int, crop: int, g: torch.Generator, device,
                 unchanged_p: float = 0.25):
    """(x (B, 2, C, crop, crop), mask, known); sources are drawn equally often, pairs within a source too."""
    names = list(sources)
    xs, ms, ks = [], [], []
    rnd = lambda: float(torch.rand(1, generator=g, device=g.device))  # noqa: E731
    for _ in range(batch):
        pairs = sources[names[int(rnd() * len(names))]]
        p = pairs[int(rnd() * len(pairs))]
        h, w = p.mask.shape
        k_max = min(4.0, min(h, w) / crop)  # resample to 0.5-4x the source's GSD where the image allows
        k = math.exp(math.log(0.5) + rnd() * (math.log(max(k_max, 0.5)) - math.log(0.5)))
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
    after = shift(after, 2.0, g)
    return torch.stack([before, after], 1), torch.stack(ms)[:, None], torch.stack(ks)[:, None]


def loss_fn(logits: torch.Tensor, mask: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none", pos_weight=torch.tensor(2.0, device=logits.device))
    bce = (bce * known).sum() / known.sum().clamp_min(1.0)
    p = torch.sigmoid(logits) * known
    dice = 1 - (2 * (p * mask).sum() + 1) / (p.sum() + (mask * known).sum() + 1)
    return bce + 0.5 * dice


@torch.no_grad()
def tune_threshold(model, sources: dict[str, list[Pair]]) -> tuple[float, float]:
    """The threshold with the best F1 over the training pairs' known pixels (pooled per source, then averaged
    over sources so that no source dominates), never below the score of identical dates."""
    model.eval()
    bins = 200
    edges = torch.arange(bins) / bins  # candidate thresholds
    f1s = []
    for pairs in sources.values():
        pos_hist, neg_hist = torch.zeros(bins), torch.zeros(bins)
        for p in pairs:
            x = p.x[None]
            h, w = x.shape[-2:]
            ph, pw = (-h) % 8, (-w) % 8
            xb = F.pad(x[:, 0], (0, pw, 0, ph), mode="replicate")
            xa = F.pad(x[:, 1], (0, pw, 0, ph), mode="replicate")
            s = model(xb, xa)[0, 0, :h, :w].float().cpu()
            kn, m = p.known.cpu() > 0, p.mask.cpu() > 0
            idx = (s * bins).long().clamp(0, bins - 1)
            pos_hist += torch.bincount(idx[kn & m], minlength=bins).float()
            neg_hist += torch.bincount(idx[kn & ~m], minlength=bins).float()
        tp = pos_hist.flip(0).cumsum(0).flip(0)  # scores >= each threshold
        fp = neg_hist.flip(0).cumsum(0).flip(0)
        f1s.append(2 * tp / (2 * tp + fp + (pos_hist.sum() - tp)).clamp_min(1))
    f1 = torch.stack(f1s).mean(0)
    floor = float(torch.sigmoid(model.bias.detach().float().cpu())) + 0.05
    f1[edges < floor] = -1
    i = int(f1.argmax())
    model.train()
    return float(edges[i]), float(f1[i])


def calibrate_steps(seconds: float, train, batch: int, crop: int, device, width: int) -> int:
    """How many steps fit in `seconds` on this machine, timed on a throw-away model."""
    g = torch.Generator(device=device).manual_seed(12345)
    model = create_model("siam_diff_unet", in_channels=3, width=width).to(device)
    opt = torch.optim.AdamW(model.parameters())
    amp = device.type == "cuda"
    t0 = 0.0
    for i in range(25):
        if i == 5:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
        x, mask, known = sample_batch(train, batch, crop, g, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model.forward_train(x[:, 0], x[:, 1])["logits"][0], mask, known)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return max(50, int(seconds / ((time.time() - t0) / 20)))


def train_one(train: dict[str, list[Pair]], steps: int, batch: int, crop: int, lr: float, seed: int,
              device, width: int, log_every: int = 500):
    torch.manual_seed(seed)
    g = torch.Generator(device=device).manual_seed(seed)
    model = create_model("siam_diff_unet", in_channels=3, width=width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    amp = device.type == "cuda"
    t0 = time.time()
    for step in range(1, steps + 1):
        x, mask, known = sample_batch(train, batch, crop, g, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model.forward_train(x[:, 0], x[:, 1])["logits"][0]
        loss = loss_fn(logits, mask, known)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            print(f"  step {step}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    thr, f1 = tune_threshold(model, train)
    return model.eval(), thr, f1, time.time() - t0


def card(train_names: list[str], sources: dict[str, list[Pair]], data_note: str) -> dict:
    gsds = [sources[n][0].gsd for n in train_names]
    return {"layout": "rgb", "band_count": 3, "band_names": ["red", "green", "blue"],
            "value_range": "any (each date standardised per band over the image)",
            "gsd_m": [min(gsds) * 0.5, max(gsds) * 4.0], "usable_gsd_m": None,
            "change": ", ".join(sorted({CHANGE[n] for n in train_names})),
            "data": data_note + ": " + ", ".join(f"{n} ({len(sources[n])} pairs, {sources[n][0].gsd:g} m)"
                                                  for n in train_names),
            "recipe": "benchmarks/train_default.py"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(".domain_data"))
    ap.add_argument("--out", type=Path, default=Path("runs/default"))
    ap.add_argument("--sources", nargs="+", default=list(SOURCES))
    ap.add_argument("--folds", action="store_true", help="also one model per left-out source")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--seconds", type=float, default=None, help="set --steps to what fits this long per run")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    a.out.mkdir(parents=True, exist_ok=True)
    sources = load_sources(a.data, a.sources, device)
    if a.seconds:
        a.steps = calibrate_steps(a.seconds, sources, a.batch, a.crop, device, a.width)
        print(f"{a.steps} steps per run fit in {a.seconds:g} s", flush=True)
    runs = [("all", list(a.sources))] + ([(s, [n for n in a.sources if n != s]) for s in a.sources] if a.folds else [])
    summary = {}
    for name, train_names in runs:
        print(f"{name}: training on {', '.join(train_names)}", flush=True)
        model, thr, f1, secs = train_one({n: sources[n] for n in train_names}, a.steps, a.batch, a.crop, a.lr,
                                         a.seed, device, a.width)
        meta = {"model": {"name": "siam_diff_unet", "args": {"in_channels": 3, "width": a.width}},
                "normalization": {"mode": "per-image"}, "threshold": thr,
                "card": card(train_names, sources, "all labelled sources" if name == "all" else f"all but {name}"),
                "train": {"steps": a.steps, "batch": a.batch, "crop": a.crop, "lr": a.lr, "seed": a.seed,
                          "device": str(device), "seconds": round(secs, 1), "train_f1": round(f1, 4)}}
        save_checkpoint(a.out / f"{name}.safetensors", {"model": model.state_dict()}, meta)
        summary[name] = meta["train"] | {"threshold": thr}
        print(f"{name}: threshold {thr:.3f}, training F1 {f1:.3f}, {secs:.0f}s", flush=True)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
