"""The training loop: device, AMP on CUDA, seeding, data, progress, logging, curves, checkpoints, resume
and DDP. What is learned and how is the task's business (cdtool.engine.tasks).

Run folder ``<out>/``: ``recipe.yaml`` (resolved), ``metrics.csv`` and ``metrics.json`` (one row per
epoch), ``curves.png``, ``best.safetensors`` (best validation score), ``last.safetensors`` and
``last.state.pt`` (optimisers, scheduler, AMP scaler, epoch, best score, history: tensors and plain
values only, read back with ``torch.load(weights_only=True)``).

Reproducibility: everything random in an epoch (weights aside) is seeded from (seed, epoch) (the torch
RNG, the sampler order, the dataset's crops), so resuming after epoch k replays epochs k+1... exactly as
an uninterrupted run would: on CPU the weights agree bit for bit. An interruption mid-epoch resumes
from the last finished epoch.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from cdtool.data.registry import build_dataset
from cdtool.data.samplers import OverSampler, UnderSampler
from cdtool.engine import distributed
from cdtool.io.checkpoint import load_checkpoint, save_checkpoint
from cdtool.normalization import normalize_batch
from cdtool.engine.recipe import Recipe, dump_recipe
from cdtool.engine.tasks import TASKS, TrainOutputs
from cdtool.errors import CdtoolError, InputError
from cdtool.io.outputs import replaced_when_done, write_text_atomic
from cdtool.losses.base import create_loss
from cdtool.metrics import best_threshold
from cdtool.models.registry import create_model, model_entry

STATE_FILE = "last.state.pt"


@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int
    best_score: float
    threshold: float
    history: list[dict]
    modules: dict[str, nn.Module]  # the trained modules in memory (state after the last epoch)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resolve_model_args(recipe: Recipe, channels: int | None) -> dict:
    """Fill in_channels from the data when the recipe leaves it out and the builder takes it."""
    import inspect

    args = dict(recipe.model.args)
    params = inspect.signature(model_entry(recipe.model.name).builder).parameters
    if "in_channels" in params and "in_channels" not in args and channels is not None:
        args["in_channels"] = int(channels)
    return args


def load_init(model: nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Initialise from a local weights file by parameter name (e.g. a pretrained backbone): safetensors
    (a cdtool checkpoint's 'model' state or a plain state dict) or a weights-only torch file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"model.init: {p}: no such weights file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(p))
        state = {k.removeprefix("model."): v for k, v in flat.items()}
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle with code in it, or not a torch file at all
            raise InputError(f"model.init: {p}: not a weights-only torch file ({exc})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fit:
        raise InputError(f"model.init: {p}: no parameter matches the model by name and shape")
    model.load_state_dict(fit, strict=False)
    return sorted(fit), sorted(set(own) - set(fit))


def _history_files(run_dir: Path, history: list[dict]) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(history, indent=1))
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    _plot(run_dir / "curves.png", history)


def _plot(path: Path, history: list[dict]) -> None:
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


def _epoch_sampler(train_set, recipe: Recipe, kind: str, epoch: int, dd) -> Sampler[int]:
    """The epoch's order: shuffled, or class-balanced by under-/over-sampling; under DDP each rank takes
    its share of the same draw."""
    data = recipe.data
    if kind == "random":
        if dd.enabled:
            sampler = DistributedSampler(train_set, num_replicas=dd.world, rank=dd.rank, shuffle=True,
                                         seed=recipe.seed)
            sampler.set_epoch(epoch)
            return sampler
        return RandomSampler(train_set, generator=torch.Generator().manual_seed(recipe.seed * 7919 + epoch))
    labels = getattr(train_set, "labels", None)
    if not labels:
        raise InputError(f"data.sampler {kind!r} needs labelled samples; this training set has no labels")
    try:
        sampler = (UnderSampler(labels, recipe.seed, data.sampler_ratio) if kind == "under"
                   else OverSampler(labels, recipe.seed))
    except ValueError as exc:
        raise InputError(f"data.sampler {kind!r}: {exc}") from None
    sampler.set_epoch(epoch)
    if dd.enabled:
        sampler.set_shard(dd.rank, dd.world)
    return sampler


def _scheduler(opt: torch.optim.Optimizer, recipe: Recipe, epochs: int):
    """The learning-rate schedule of one phase of `epochs` epochs."""
    s = recipe.schedule
    if s.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if s.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
    return None


def _datasets(recipe: Recipe, train_overrides: dict) -> tuple:
    data = recipe.data
    train_args = {**data.args, **data.train, **train_overrides}
    if data.kind == "folder":
        train_args["seed"] = recipe.seed
    train_set = build_dataset(data.kind, **train_args)
    val_set = None
    if data.val is not None:
        val_args = {**data.args, **data.val}
        if data.kind == "folder":
            val_args.update(crop=None, augment=False, seed=recipe.seed + 1)
        val_set = build_dataset(data.kind, **val_args)
    return train_set, val_set


def _wrap(modules: dict[str, nn.Module], dd, device: torch.device) -> dict[str, nn.Module]:
    """The modules as training calls them: `TrainOutputs` for models, and DDP when distributed."""
    wrapped: dict[str, nn.Module] = {}
    for name, mod in modules.items():
        w: nn.Module = TrainOutputs(mod) if hasattr(mod, "forward_train") else mod
        if dd.enabled and device.type == "cuda":
            # one set of BatchNorm statistics across ranks, as one large batch would give (gloo on CPU
            # cannot run SyncBatchNorm: there each rank keeps its own statistics)
            w = nn.SyncBatchNorm.convert_sync_batchnorm(w)
        if dd.enabled and any(p.requires_grad for p in mod.parameters()):
            # find_unused_parameters: a model may hold parameters a configuration or phase leaves unused
            # (CosimNet's cosine scale under l2); without it their gradient buckets would never be averaged
            w = nn.parallel.DistributedDataParallel(w, device_ids=[device.index] if device.type == "cuda" else None,
                                                    find_unused_parameters=True)
        wrapped[name] = w
    return wrapped


def train(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, device: torch.device | None = None,
          quiet: bool = False, stop_after: int | None = None) -> RunResult:
    """Train `recipe` into `run_dir`, phase after phase. `resume` continues from ``last.*`` there, inside a
    phase or at the next; `stop_after` ends after that many epochs in this call (to test interruption)."""
    device = device or torch.device("cpu")
    dd = distributed.setup(device)
    run_dir = Path(run_dir)
    if dd.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    state_path, last_path = run_dir / STATE_FILE, run_dir / "last.safetensors"
    if not resume and last_path.exists():
        raise InputError(f"{run_dir}: holds a run already; pass --resume to continue it or choose another --out")
    if resume and not (state_path.is_file() and last_path.is_file()):
        raise InputError(f"{run_dir}: nothing to resume (no last.safetensors / {STATE_FILE})")

    seed_all(recipe.seed)
    data = recipe.data
    plan = recipe.phase_plan()
    total_epochs = sum(ph.epochs for ph in plan)
    train_set, val_set = _datasets(recipe, plan[0].train)
    built_for = plan[0].train
    channels = getattr(train_set, "channels", None)
    if channels is None and len(train_set):
        channels = int(train_set[0]["image"].shape[1])
    model_args = _resolve_model_args(recipe, channels)
    resolved = recipe.model_copy(deep=True)
    resolved.model.args = model_args

    model = create_model(recipe.model.name, **model_args)
    crop, mult = data.train.get("crop"), int(getattr(model, "size_multiple", 1))
    if data.kind == "folder" and crop and crop % mult:
        raise InputError(f"data.train.crop: {crop} is not a multiple of {mult}, which model "
                         f"{recipe.model.name!r} needs; use e.g. {max(mult, crop // mult * mult)}")
    if recipe.model.init and not resume:
        load_init(model, recipe.model.init)
    model.to(device)
    task = TASKS.get(recipe.task)(resolved, model, create_loss(recipe.loss.name, **recipe.loss.args))
    modules = task.modules()
    wrapped = _wrap(modules, dd, device)
    amp = recipe.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    history: list[dict] = []
    start, best, best_epoch, best_thr, st = 0, -math.inf, -1, 0.5, None
    if resume:
        _check_manifest(run_dir)
        states, _ = load_checkpoint(last_path)
        for name, mod in modules.items():
            mod.load_state_dict(states[name])
        try:
            st = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle with code in it, or a damaged file: never executed
            raise InputError(f"{state_path}: not a cdtool run state ({str(exc).splitlines()[0][:120]})") from None
        if amp and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        start, best, best_epoch = int(st["epoch"]) + 1, float(st["best"]), int(st["best_epoch"])
        best_thr = float(st["best_threshold"])
        history = json.loads(st["history"])
        if start >= total_epochs:
            knob = "the phases' epochs" if recipe.phases else "schedule.epochs (--set schedule.epochs=N)"
            raise InputError(f"{run_dir}: already trained for {total_epochs} epochs; raise {knob} to train longer")
    if dd.main:
        (run_dir / "recipe.yaml").write_text(dump_recipe(resolved))

    val_loader = DataLoader(val_set, batch_size=1, num_workers=data.workers) if val_set is not None else None
    end = total_epochs if stop_after is None else min(total_epochs, start + stop_after)
    first = 0
    for ph in plan:
        ph_first, first = first, first + ph.epochs
        if first <= start or ph_first >= end:
            continue  # finished before this call, or beyond it
        if ph.train != built_for:  # this phase trains on other data
            (train_set, _), built_for = _datasets(recipe, ph.train), ph.train
        optims = task.optimizers(wrapped, ph.name, ph.lr)
        scheds = {k: _scheduler(o, recipe, ph.epochs) for k, o in optims.items()}
        if st is not None and start > ph_first:  # resuming inside this phase: its optimisers' state
            for k, o in optims.items():
                o.load_state_dict(st["optimizers"][k])
            for k, sch in scheds.items():
                if sch is not None and k in st["schedulers"]:
                    sch.load_state_dict(st["schedulers"][k])
        warned: set[str] = set()
        for epoch in range(max(start, ph_first), min(first, end)):
            t0 = time.time()
            row = _train_epoch(task, wrapped, optims, scaler, train_set, recipe, ph, epoch, total_epochs, dd,
                               device, amp, quiet)
            for sch in scheds.values():
                if sch is not None:
                    sch.step()
            thr = recipe.threshold if recipe.threshold != "tune" else 0.5
            if val_loader is not None:
                acc = task.validate(val_loader, recipe.normalization, device, amp)
                if recipe.threshold == "tune":
                    thr, _ = best_threshold(acc.pos_hist, acc.neg_hist)
                row.update({f"val_{k}": v for k, v in acc.at_threshold(float(thr)).compute().items()})
                for warning in degenerate_validation(acc.pos_hist, acc.neg_hist, float(thr)):
                    if dd.main and warning not in warned:
                        warned.add(warning)
                        _warn(f"epoch {epoch + 1}: {warning}")
            row["threshold"] = float(thr)
            row["seconds"] = round(time.time() - t0, 2)
            history.append(row)
            score = -row["train_loss"] if (recipe.monitor == "loss" or val_loader is None) else row[f"val_{recipe.monitor}"]
            score = -math.inf if math.isnan(score) else score
            improved = score > best
            if improved:
                best, best_epoch, best_thr = score, epoch + 1, float(thr)
            if dd.main:
                meta = _meta(resolved, row, ph.name, epoch + 1, float(thr), train_set, val_set)
                states = {n: m.state_dict() for n, m in modules.items()}
                if improved:
                    save_checkpoint(run_dir / "best.safetensors", states, meta)
                save_checkpoint(last_path, states, meta)
                _save_state(state_path, optims, scheds, scaler if amp else None, epoch, ph.name, best, best_epoch,
                            best_thr, history)
                _write_manifest(run_dir, epoch, ph.name)  # last: a kill before this leaves a detectable tear
                _history_files(run_dir, history)
                if not quiet:
                    _report(row)
            distributed.barrier(dd)
    return RunResult(run_dir, best_epoch, best, best_thr, history, modules)


def _train_epoch(task, wrapped, optims, scaler, train_set, recipe: Recipe, ph, epoch: int, total_epochs: int, dd,
                 device: torch.device, amp: bool, quiet: bool) -> dict:
    """One pass over the epoch's draw of the training set; the logged row (loss, its parts, lr)."""
    data = recipe.data
    seed_all(recipe.seed * 100_003 + epoch)
    if hasattr(train_set, "set_epoch"):
        train_set.set_epoch(epoch)
    sampler = _epoch_sampler(train_set, recipe, ph.sampler or data.sampler, epoch, dd)
    loader = DataLoader(train_set, batch_size=data.batch_size, sampler=sampler, num_workers=data.workers,
                        drop_last=len(sampler) >= 2 * data.batch_size)
    for w in wrapped.values():
        w.train()
    total, count, parts_sum = 0.0, 0, {}
    bar = _progress(loader, f"epoch {epoch + 1}/{total_epochs}", quiet or not dd.main)
    for batch in bar:
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        before, after = normalize_batch(batch["image"], recipe.normalization, batch.get("mean"), batch.get("std"))
        steps = task.training_step(wrapped, before, after, batch, ph.name)
        while True:
            with torch.autocast("cuda", enabled=amp):  # the forward passes run inside, the backward outside
                item = next(steps, None)
            if item is None:
                break
            name, loss, parts = item
            opt = optims[name]
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise CdtoolError(f"epoch {epoch + 1}: the loss became {float(loss.detach())} (training failed, the input is "
                                  "not at fault); lower optim.lr or set schedule.clip_grad")
            scaler.scale(loss).backward()
            if recipe.schedule.clip_grad:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                               recipe.schedule.clip_grad)
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach())
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
        count += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / count:.4f}")
    row = {"epoch": epoch + 1, "phase": ph.name, "train_loss": distributed.mean_across(total / max(count, 1), dd)}
    for name, opt in optims.items():  # the learning rate the epoch ran at, per optimiser when several
        row["lr" if len(optims) == 1 else f"lr_{name}"] = opt.param_groups[0]["lr"]
    row.update({f"train_{k}": v / max(count, 1) for k, v in parts_sum.items()})
    return row


def _meta(recipe: Recipe, row: dict, phase: str, epoch: int, threshold: float, train_set, val_set) -> dict:
    """What detection and provenance need: model name and args, normalisation, threshold, band names."""
    return {"model": {"name": recipe.model.name, "args": recipe.model.args},
            "normalization": recipe.normalization, "threshold": threshold, "bands": None,
            "task": recipe.task, "phase": phase, "epoch": epoch,
            "metrics": {k: v for k, v in row.items() if isinstance(v, (int, float)) and not
                        (isinstance(v, float) and math.isnan(v))},
            "train_pairs": list(getattr(train_set, "names", [])), "val_pairs": list(getattr(val_set, "names", [])),
            "recipe": recipe.model_dump(mode="json"), "card": _card(recipe, train_set, row)}


def _card(recipe: Recipe, train_set, row: dict) -> dict:
    """The domain a trained model can vouch for: its band count and data. The GSD and the kind of change are
    not known to the engine (PNG crops carry no georeference), so they stay unrecorded and such a model is
    never picked as a default; `cdtool info` shows what is known."""
    channels = getattr(train_set, "channels", None) or recipe.model.args.get("in_channels")
    data = recipe.data.model_dump(mode="json") if hasattr(recipe.data, "model_dump") else {}
    roots = (data.get("args") or {}).get("roots") or (data.get("args") or {}).get("root") or []
    return {"band_count": channels, "value_range": "any (normalisation: " + recipe.normalization.get("mode", "?") + ")",
            "change": "not recorded", "data": ", ".join(map(str, roots if isinstance(roots, list) else [roots]))
            + f" ({len(getattr(train_set, 'names', []))} training pairs)", "recipe": recipe.name,
            "scores": {"validation": {k: row[k] for k in ("val_f1", "val_iou", "val_auroc")
                                      if isinstance(row.get(k), float) and not math.isnan(row[k])}}}


MANIFEST = "last.json"
RESUME_FILES = ("last.safetensors", STATE_FILE)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_manifest(run_dir: Path, epoch: int, phase: str) -> None:
    """Checksums of the resume files, written after both: resume trusts the pair only when they match."""
    manifest = {"epoch": epoch, "phase": phase, "sha256": {n: _sha256(run_dir / n) for n in RESUME_FILES}}
    write_text_atomic(run_dir / MANIFEST, json.dumps(manifest, indent=1))


def _check_manifest(run_dir: Path) -> None:
    """Refuse to resume from a torn pair (a crash or full disk between the two saves, or files from two runs)."""
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        sums = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{run_dir}: no readable {MANIFEST}: the last save did not finish (or an older cdtool "
                         "made this run); start a new run") from None
    for name in RESUME_FILES:
        if _sha256(run_dir / name) != sums.get(name):
            raise InputError(f"{run_dir / name}: does not match {MANIFEST} (epoch {manifest.get('epoch', '?')}); "
                             "the last save was torn, so resuming would diverge: start a new run")


def _save_state(path: Path, optims, scheds, scaler, epoch: int, phase: str, best: float, best_epoch: int,
                best_thr: float, history: list[dict]) -> None:
    st = {"optimizers": {k: o.state_dict() for k, o in optims.items()},
          "schedulers": {k: s.state_dict() for k, s in scheds.items() if s is not None},
          "scaler": scaler.state_dict() if scaler is not None else {},
          "epoch": epoch, "phase": phase, "best": best, "best_epoch": best_epoch, "best_threshold": best_thr,
          "history": json.dumps(history)}
    with replaced_when_done(path) as tmp:
        torch.save(st, tmp)


def _progress(loader, desc: str, quiet: bool):
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


def _warn(text: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[yellow]warning:[/] {text}", markup=True)


def _report(row: dict) -> None:
    from rich.console import Console

    keys = [k for k in ("train_loss", "val_f1", "val_iou", "val_auroc", "threshold", "seconds") if k in row]
    Console(stderr=True, highlight=False).print(
        f"epoch {row['epoch']}: " + "  ".join(f"{k}={row[k]:.4g}" for k in keys))
