"""Fit a pixel classifier on an analyst's labelled pixels, and say how good it is before anyone trusts it.

The features of the sampled pixels are computed window by window exactly as detect will compute them (the
same per-image normalisation, the model's own feature code, a halo around each window), so a pixel's score at
fitting equals its score in the map. The head is fitted by weighted L-BFGS, each polygon weighing the same
within its class and the two classes the same; validation refits it with each polygon left out (groups beyond
MAX_FOLDS share folds) and scores the pixels left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cdtool.labels.read import LabelSample
from cdtool.models.pixel_classifier import PixelClassifier
from cdtool.windows import Tile

FEATURE_WINDOW = 512  # pixels a side of the windows features are computed in
MAX_FOLDS = 50  # leave-one-polygon-out up to this many polygons; beyond, polygons share this many folds
L2 = 1e-3  # weight decay of the head: a few polygons must not let it fit their noise


@dataclass(frozen=True)
class HeadSpec:
    """What is fitted: hidden units (0: logistic regression) and the feature scales. One hidden layer of 16 beat
    logistic regression on the analyst simulation (README, benchmarks/labels_table.py)."""
    hidden: int = 16
    scales: tuple[int, ...] = (5, 11)
    steps: int = 60


def sample_features(pair, normalizer, model: PixelClassifier, sample: LabelSample,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(n, F) raw features of the sampled pixels, and which of them are valid in both dates."""
    from tqdm import tqdm

    height, width = pair.shape
    halo = model.halo
    feats = np.zeros((len(sample.rows), 3 * pair.info.count + 1 + len(model.scales) * (3 * pair.info.count + 1)),
                     np.float32)
    valid = np.zeros(len(sample.rows), bool)
    key = (sample.rows // FEATURE_WINDOW) * (-(-width // FEATURE_WINDOW)) + sample.cols // FEATURE_WINDOW
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for chunk in tqdm(np.split(order, bounds), desc="features", unit="window", disable=not progress, leave=False):
        r0 = int(sample.rows[chunk[0]]) // FEATURE_WINDOW * FEATURE_WINDOW
        c0 = int(sample.cols[chunk[0]]) // FEATURE_WINDOW * FEATURE_WINDOW
        top, left = max(0, r0 - halo), max(0, c0 - halo)
        bottom, right = min(height, r0 + FEATURE_WINDOW + halo), min(width, c0 + FEATURE_WINDOW + halo)
        data, ok = pair.read(Tile(top, left, bottom - top, right - left))
        z = torch.from_numpy(normalizer(data))
        with torch.no_grad():
            from cdtool.models.pixel_classifier import pixel_features

            f = pixel_features(z[0][None], z[1][None], model.scales)[0]
        r, c = sample.rows[chunk] - top, sample.cols[chunk] - left
        feats[chunk] = f[:, r, c].T.numpy()
        valid[chunk] = ok[r, c]
    return feats, valid


def sample_weights(label: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Each polygon the same weight within its class, each class half of the total."""
    w = np.zeros(len(label), np.float64)
    for cls in (0, 1):
        in_cls = label == cls
        groups, inverse, per = np.unique(group[in_cls], return_inverse=True, return_counts=True)
        w[in_cls] = 0.5 / (len(groups) * per[inverse])
    return w


def fit_head(x: np.ndarray, y: np.ndarray, w: np.ndarray, spec: HeadSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """The standardisation and the head's weights (a PixelClassifier state dict) fitted on (x, y, w)."""
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y.astype(np.float64))
    wt = torch.from_numpy(w / w.sum())
    mean = (xt * wt[:, None]).sum(0)
    std = ((xt - mean).square() * wt[:, None]).sum(0).sqrt().clamp_min(1e-6)
    z = ((xt - mean) / std).float()
    head = _head(x.shape[1], spec.hidden)
    weights = [p for n, p in head.named_parameters() if n.endswith("weight")]
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=spec.steps, line_search_fn="strong_wolfe")
    target, wf = yt.float(), wt.float()

    def closure():
        opt.zero_grad()
        logit = linear_head(head, z)
        loss = ((F.softplus(logit) - target * logit) * wf).sum()  # the weighted cross-entropy of the logits
        loss = loss + L2 * sum(p.square().sum() for p in weights)
        loss.backward()
        return loss

    opt.step(closure)
    state = {f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()}
    state["feature_mean"], state["feature_std"] = mean.float(), std.float()
    return state


def _head(n: int, hidden: int) -> torch.nn.Module:
    return (torch.nn.Conv2d(n, 1, 1) if hidden == 0
            else torch.nn.Sequential(torch.nn.Conv2d(n, hidden, 1), torch.nn.ReLU(), torch.nn.Conv2d(hidden, 1, 1)))


def linear_head(head: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The 1x1-convolution head applied to feature rows (n, F) -> (n,) logits, as matrix products: a batch of
    n 1x1 images costs a convolution call each step, ten times the time."""
    layers = [head] if isinstance(head, torch.nn.Conv2d) else list(head)
    for layer in layers:
        z = F.linear(z, layer.weight.flatten(1), layer.bias) if isinstance(layer, torch.nn.Conv2d) else layer(z)
    return z.flatten()


def predict(state: dict[str, torch.Tensor], x: np.ndarray, gate: np.ndarray, hidden: int) -> np.ndarray:
    """Scores of raw feature rows under a fitted state, gate included (what the map will hold there)."""
    head = _head(x.shape[1], hidden)
    head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
    z = (torch.from_numpy(x) - state["feature_mean"]) / state["feature_std"]
    with torch.no_grad():
        return torch.sigmoid(linear_head(head, z)).numpy() * gate


def gate_of(x: np.ndarray, bands: int, tau: float) -> np.ndarray:
    """The model's gate from the raw features: the RMS difference over the smallest scale is column 4C + 1."""
    m = x[:, 4 * bands + 1].astype(np.float64)
    return (1.0 - np.exp(-(m * m) / (tau * tau))).astype(np.float32)


def folds(group: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, str]:
    """Fold of each sample: one per polygon (leave-one-polygon-out), or, past MAX_FOLDS polygons, polygons dealt
    round-robin within their class into MAX_FOLDS folds; with the name of the scheme."""
    groups = np.unique(group)
    if len(groups) <= MAX_FOLDS:
        return np.searchsorted(groups, group), "leave-one-polygon-out"
    fold_of = {}
    for cls in (0, 1):
        for i, g in enumerate(np.unique(group[label == cls])):
            fold_of[int(g)] = i % MAX_FOLDS
    return np.array([fold_of[int(g)] for g in group]), f"grouped {MAX_FOLDS}-fold (polygons left out together)"


def validate(x: np.ndarray, y: np.ndarray, group: np.ndarray, spec: HeadSpec, bands: int, tau: float,
             progress: bool = False) -> tuple[np.ndarray, str]:
    """Held-out score of every sample: the head refitted without its polygon (or fold)."""
    from tqdm import tqdm

    fold, scheme = folds(group, y)
    held = np.full(len(y), np.nan, np.float32)
    gate = gate_of(x, bands, tau)
    for k in tqdm(np.unique(fold), desc="validate", unit="fold", disable=not progress, leave=False):
        out = fold == k
        train = ~out
        if len(np.unique(y[train])) < 2:
            continue  # the only polygon of a class: nothing left to learn it from
        state = fit_head(x[train], y[train], sample_weights(y[train], group[train]), spec)
        held[out] = predict(state, x[out], gate[out], spec.hidden)
    return held, scheme


def scores(held: np.ndarray, y: np.ndarray, group: np.ndarray, threshold: float) -> dict:
    """Accuracy and F1 of the held-out pixels at the threshold, each polygon weighing the same (a large one
    must not hide a small one the model gets wrong), and per-polygon accuracy."""
    ok = np.isfinite(held)
    if not ok.any():
        return {"accuracy": None, "f1": None, "polygons_right": None}
    h, t, g = held[ok] >= threshold, y[ok].astype(bool), group[ok]
    w = sample_weights(y[ok], g)
    tp, fp, fn = (w * (h & t)).sum(), (w * (h & ~t)).sum(), (w * (~h & t)).sum()
    acc = float((w * (h == t)).sum() / w.sum())
    f1 = float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn > 0 else 0.0
    right = [float((h[g == k] == t[g == k]).mean()) >= 0.5 for k in np.unique(g)]
    return {"accuracy": round(acc, 4), "f1": round(f1, 4), "polygons_right": int(sum(right)),
            "polygons_scored": len(right)}
