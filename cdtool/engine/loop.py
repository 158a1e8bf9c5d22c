"""The training loop: device, AMP on CUDA, seeding, data, phases, frozen modules, progress, logging,
checkpoints, resume and DDP. What is learned and how is the task's business (cdtool.engine.task).

Run folder ``<out>/``: ``recipe.yaml`` (resolved), ``metrics.csv`` and ``metrics.json`` (one row per
epoch), ``curves.png``, ``best.safetensors`` (best validation score), ``last.safetensors``, and the resume
files of `cdtool.engine.run_files`.

Reproducibility: everything random in an epoch (weights aside) is seeded from (seed, epoch) (the torch
RNG, each source's order and augmentation, the dataset's crops), so resuming after epoch k replays epochs
k+1... exactly as an uninterrupted run would: on CPU the weights agree bit for bit. An interruption
mid-epoch resumes from the last finished epoch.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from cdtool.data.registry import build_dataset
from cdtool.engine import distributed
from cdtool.engine import run_files
from cdtool.engine.draws import EpochDraw
from cdtool.engine.recipe import Recipe, dump_recipe
from cdtool.engine.task import TASKS, PhaseContext, Task, TrainOutputs
from cdtool.errors import CdtoolError, InputError
from cdtool.io.checkpoint import load_checkpoint, save_checkpoint
from cdtool.io.outputs import FolderLock, write_text_atomic
from cdtool.metrics import tuned_threshold
from cdtool.models.base import ChangeModel
from cdtool.runtime import tune_allocator


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


def build_sources(recipe: Recipe, overrides: dict[str, dict]) -> dict[str, torch.utils.data.Dataset]:
    """The named training sources, with a phase's argument overrides."""
    out = {}
    for name in recipe.data.train:
        cfg = recipe.data.train[name]
        out[name] = build_dataset(cfg.kind, role="train", seed=recipe.seed,
                                  **{**recipe.data.source_args(name), **overrides.get(name, {})})
        if len(out[name]) == 0:
            raise InputError(f"data.train.{name}: the training source holds no samples")
    return out


def _channels(datasets: dict) -> int | None:
    data = next(iter(datasets.values()))
    channels = getattr(data, "channels", None)
    return int(data[0]["image"].shape[1]) if channels is None and len(data) else channels


def _check_freeze(modules: dict[str, nn.Module], plan) -> None:
    """Every `freeze` entry names a module role or one of its submodules."""
    names = {role for role in modules} | {f"{role}.{n}" for role, m in modules.items() for n, _ in m.named_modules() if n}
    for ph in plan:
        for f in ph.freeze:
            if f not in names:
                raise InputError(f"phases.{ph.name}.freeze: {f!r} is no module; roles: {', '.join(modules)}")


def _submodule(modules: dict[str, nn.Module], name: str) -> nn.Module:
    role, _, sub = name.partition(".")
    return modules[role].get_submodule(sub) if sub else modules[role]


def _freeze(modules: dict[str, nn.Module], trainable: set[int], frozen: list[str]) -> None:
    """Gradients on for the parameters the modules train (`trainable`: their ids), off in frozen modules."""
    off = {id(p) for f in frozen for p in _submodule(modules, f).parameters()}
    for mod in modules.values():
        for p in mod.parameters():
            p.requires_grad_(id(p) in trainable and id(p) not in off)


def _set_modes(modules: dict[str, nn.Module], frozen: list[str]) -> None:
    """Training mode, but frozen modules in eval mode (their BatchNorm statistics stay fixed)."""
    for mod in modules.values():
        mod.train()
    for f in frozen:
        _submodule(modules, f).eval()


def _wrap(modules: dict[str, nn.Module], process_group, device: torch.device) -> dict[str, nn.Module]:
    """The modules as training calls them: `TrainOutputs` for models, and DDP for those that train when
    distributed."""
    wrapped: dict[str, nn.Module] = {}
    for name, mod in modules.items():
        trains = isinstance(mod, ChangeModel) and mod.forward_train is not None
        w: nn.Module = TrainOutputs(mod) if trains else mod
        if process_group.enabled and any(p.requires_grad for p in mod.parameters()):
            # find_unused_parameters: a model may hold parameters a configuration or phase leaves unused
            # (CosimNet's cosine scale under l2); without it their gradient buckets would never be averaged
            w = nn.parallel.DistributedDataParallel(w, device_ids=[device.index] if device.type == "cuda" else None,
                                                    find_unused_parameters=True)
        wrapped[name] = w
    return wrapped


def _scheduler(opt: torch.optim.Optimizer, recipe: Recipe, epochs: int):
    """The learning-rate schedule of one phase of `epochs` epochs."""
    s = recipe.schedule
    if s.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if s.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
    if s.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(s.milestones), gamma=s.gamma)
    return None


def train(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, device: torch.device | None = None,
          quiet: bool = False, stop_after: int | None = None) -> RunResult:
    """Train `recipe` into `run_dir`, phase after phase. `resume` continues from ``last.*`` there, inside a
    phase or at the next; `stop_after` ends after that many epochs in this call (to test interruption)."""
    device = distributed.rank_device(device or torch.device("cpu"))
    tune_allocator()  # each step reuses the last one's freed activations instead of faulting in fresh pages
    # one run trains into a folder at a time (under DDP the ranks share it: rank 0 holds the lock)
    with FolderLock(run_dir) if distributed.setup(device).main else nullcontext():
        return Training(recipe, Path(run_dir), resume, device, quiet).run(stop_after)


class Training:
    """One `train` call: the task and its data, where the run stands (epoch, best score, history), and the
    phases run from there."""

    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool, device: torch.device, quiet: bool):
        self.process_group = distributed.setup(device)
        self.run_dir, self.device, self.quiet = run_dir, device, quiet
        self._check_run_dir(resume)
        seed_all(recipe.seed)
        self.plan = recipe.phase_plan()
        self.total = sum(ph.epochs for ph in self.plan)
        self.datasets, self.built_for = build_sources(recipe, self.plan[0].train), self.plan[0].train
        self.val_set = (build_dataset(recipe.data.val.kind, role="val", seed=recipe.seed, **recipe.data.val_args())
                        if recipe.data.val is not None else None)
        self.task: Task = TASKS.get(recipe.task)(recipe, _channels(self.datasets), device, init=not resume)
        self.task.check_data(self.datasets)
        self.recipe = recipe.model_copy(deep=True)  # resolved: the modules' arguments as built
        for role, args in self.task.model_args.items():
            self.recipe.models[role].args = args
        self.modules = self.task.modules()
        _check_freeze(self.modules, self.plan)
        if self.process_group.enabled and device.type == "cuda":
            # one set of BatchNorm statistics across ranks, as one large batch would give (gloo on CPU
            # cannot run SyncBatchNorm: there each rank keeps its own statistics)
            for mod in self.modules.values():
                nn.SyncBatchNorm.convert_sync_batchnorm(mod)
        self.trainable = {id(p) for mod in self.modules.values() for p in mod.parameters() if p.requires_grad}
        self.amp = recipe.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.history: list[dict] = []
        self.start, self.best, self.best_epoch, self.best_thr, self.state = 0, -math.inf, -1, 0.5, None
        if resume:
            self._restore()
        if self.process_group.main:
            write_text_atomic(run_dir / "recipe.yaml", dump_recipe(self.recipe))

    def _check_run_dir(self, resume: bool) -> None:
        if self.process_group.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and (self.run_dir / "last.safetensors").exists():
            raise InputError(f"{self.run_dir}: holds a run already; pass --resume to continue it or choose another --out")
        if resume and not all((self.run_dir / f).is_file() for f in run_files.RESUME_FILES):
            raise InputError(f"{self.run_dir}: nothing to resume (no {' / '.join(run_files.RESUME_FILES)})")

    def _restore(self) -> None:
        """Where the interrupted run stood: its modules, scaler, epoch, best score and history."""
        run_files.check_manifest(self.run_dir)
        states, _ = load_checkpoint(self.run_dir / "last.safetensors")
        for name, mod in self.modules.items():
            try:
                mod.load_state_dict(states[name])
            except (KeyError, RuntimeError) as exc:  # --set changed the model, or another task's run
                first = str(exc).replace("Error(s) in loading state_dict for", "").split("\n\t")[:2]
                raise InputError(f"{self.run_dir}: its weights do not fit the recipe's model {name!r} "
                                 f"({' '.join(first).strip()}); resume with the settings the run was made "
                                 "with") from None
        st = self.state = run_files.load_state(self.run_dir / run_files.STATE_FILE)
        if self.amp and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.start, self.best, self.best_epoch = int(st["epoch"]) + 1, float(st["best"]), int(st["best_epoch"])
        self.best_thr, self.history = float(st["best_threshold"]), json.loads(st["history"])
        if self.start >= self.total:
            knob = "the phases' epochs" if self.recipe.phases else "schedule.epochs (--set schedule.epochs=N)"
            raise InputError(f"{self.run_dir}: already trained for {self.total} epochs; raise {knob} to train longer")

    def run(self, stop_after: int | None) -> RunResult:
        data = self.recipe.data
        self.val_loader = (DataLoader(self.val_set, batch_size=1, num_workers=data.workers)
                           if self.val_set is not None else None)
        end = self.total if stop_after is None else min(self.total, self.start + stop_after)
        first = 0
        for ph in self.plan:
            ph_first, first = first, first + ph.epochs
            if ph.train != self.built_for:  # this phase trains on other data
                self.datasets, self.built_for = build_sources(self.recipe, ph.train), ph.train
            if ph.epochs == 0:
                if self.start <= ph_first and (ph_first < end or ph_first == end == self.total):
                    self._data_pass(ph, final=ph_first == self.total)
            elif self.start < first and ph_first < end:  # not finished before this call, nor beyond it
                self._phase(ph, ph_first, min(first, end))
        return RunResult(self.run_dir, self.best_epoch, self.best, self.best_thr, self.history, self.modules)

    def _data_pass(self, ph, final: bool) -> None:
        """A zero-epoch phase: only the task's pass over the data. At the very end it changes the final
        model, which is then saved as both last and best."""
        self.task.before_phase(ph.name, PhaseContext(self.datasets, self.device, self.recipe.data.workers))
        if final and self.process_group.main:
            row = self.history[-1] if self.history else {}
            self.best_epoch, self.best_thr = self.total, float(row.get("threshold", self.best_thr))
            self._save(row, ph.name, self.total, self.best_thr, best=True)

    def _phase(self, ph, ph_first: int, stop: int) -> None:
        """Epochs of a phase from where the run stands up to `stop`, with its frozen modules, learning rate and
        groups; the task's pass over the data first when the phase starts from its beginning."""
        _freeze(self.modules, self.trainable, ph.freeze)
        wrapped = _wrap(self.modules, self.process_group, self.device)
        if self.start <= ph_first:
            self.task.before_phase(ph.name, PhaseContext(self.datasets, self.device, self.recipe.data.workers))
        factors = self.recipe.optim.groups if ph.groups is None else ph.groups
        optims = self.task.optimizers(wrapped, ph.name, ph.lr, ph.freeze, factors)
        scheds = {k: _scheduler(o, self.recipe, ph.epochs) for k, o in optims.items()}
        if self.state is not None and self.start > ph_first:  # resuming inside this phase: its optimisers' state
            for k, o in optims.items():
                o.load_state_dict(self.state["optimizers"][k])
            for k, sch in scheds.items():
                if sch is not None and k in self.state["schedulers"]:
                    sch.load_state_dict(self.state["schedulers"][k])
        warned: set[str] = set()
        for epoch in range(max(self.start, ph_first), stop):
            t0 = time.time()
            row = _train_epoch(self, wrapped, optims, ph, epoch)
            for sch in scheds.values():
                if sch is not None:
                    sch.step()
            row["threshold"] = self._validate(row, epoch, warned)
            row["seconds"] = round(time.time() - t0, 2)
            self.history.append(row)
            self._record(row, ph, epoch, optims, scheds)

    def _validate(self, row: dict, epoch: int, warned: set[str]) -> float:
        """Validation scores into `row`; the threshold (tuned on them when the recipe says so)."""
        recipe = self.recipe
        thr = recipe.threshold if recipe.threshold != "tune" else 0.5
        if self.val_loader is None:
            return float(thr)
        acc = self.task.validate(self.val_loader, self.device, self.amp)
        if recipe.threshold == "tune":
            thr = tuned_threshold(acc.pos_hist, acc.neg_hist)
        row.update({f"val_{k}": v for k, v in acc.at_threshold(float(thr)).compute().items()})
        for warning in run_files.degenerate_validation(acc.pos_hist, acc.neg_hist, float(thr)):
            if self.process_group.main and warning not in warned:
                warned.add(warning)
                run_files.warn(f"epoch {epoch + 1}: {warning}")
        return float(thr)

    def _record(self, row: dict, ph, epoch: int, optims: dict, scheds: dict) -> None:
        """Keep the best score; write checkpoints, run state, manifest and metrics; report the epoch."""
        monitor = self.recipe.monitor
        score = -row["train_loss"] if (monitor == "loss" or self.val_loader is None) else row[f"val_{monitor}"]
        score = -math.inf if math.isnan(score) else score
        improved = score > self.best
        if improved:
            self.best, self.best_epoch, self.best_thr = score, epoch + 1, row["threshold"]
        if self.process_group.main:
            run_files.keep_previous(self.run_dir)  # a kill between the two saves falls back to this pair
            self._save(row, ph.name, epoch + 1, row["threshold"], best=improved)
            run_files.save_state(self.run_dir / run_files.STATE_FILE, optims, scheds, self.scaler if self.amp else None,
                                 epoch, ph.name, self.best, self.best_epoch, self.best_thr, self.history)
            run_files.write_manifest(self.run_dir, epoch, ph.name)  # last: a kill before this leaves a detectable tear
            run_files.write_history(self.run_dir, self.history)
            if not self.quiet:
                run_files.report(row)
        distributed.barrier(self.process_group)

    def _save(self, row: dict, phase: str, epoch: int, threshold: float, best: bool) -> None:
        """last.safetensors (and best.safetensors when `best`): every module's state for resume, and under
        "model" the detector the task exports, with what detection and provenance need."""
        train_set = next(iter(self.datasets.values()))
        recipe = self.recipe
        args = self.task.model_args[self.task.detector]
        meta, detector_state = self.task.export(
            threshold=threshold, phase=phase, epoch=epoch,
            metrics={k: v for k, v in row.items() if isinstance(v, (int, float)) and not
                     (isinstance(v, float) and math.isnan(v))},
            train_pairs=list(getattr(train_set, "names", None) or []),
            val_pairs=list(getattr(self.val_set, "names", None) or []),
            recipe=recipe.model_dump(mode="json"), card=_card(recipe, train_set, row, args))
        states = {n: m.state_dict() for n, m in self.modules.items()}
        states["model"] = detector_state
        if best:
            save_checkpoint(self.run_dir / "best.safetensors", states, meta)
        save_checkpoint(self.run_dir / "last.safetensors", states, meta)


def _train_epoch(run: Training, wrapped: dict[str, nn.Module], optims: dict, ph, epoch: int) -> dict:
    """One pass over the epoch's draw of the training sources; the logged row (loss, its parts, lr)."""
    seed_all(run.recipe.seed * 100_003 + epoch)
    for data in run.datasets.values():
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
    draw = EpochDraw(run.datasets, run.recipe, ph, epoch, run.device, run.process_group, run.recipe.phase_sources(ph))
    _set_modes(run.modules, ph.freeze)
    total, count, parts_sum = 0.0, 0, {}
    bar = run_files.progress(draw, f"epoch {epoch + 1}/{run.total}", run.quiet or not run.process_group.main)
    for batches in bar:
        steps = run.task.training_step(wrapped, batches, ph.name)
        while True:
            with torch.autocast("cuda", enabled=run.amp):  # the forward passes run inside, the backward outside
                item = next(steps, None)
            if item is None:
                break
            name, loss, parts = item
            total += _step(run, optims[name], loss, epoch)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
        run.task.after_step(ph.name)
        count += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / count:.4f}")
    row = {"epoch": epoch + 1, "phase": ph.name,
           "train_loss": distributed.mean_across(total / max(count, 1), run.process_group)}
    for name, opt in optims.items():  # the learning rate the epoch ran at, per optimiser when several
        row["lr" if len(optims) == 1 else f"lr_{name}"] = opt.param_groups[0]["lr"]
    row.update({f"train_{k}": v / max(count, 1) for k, v in parts_sum.items()})
    return row


def _step(run: Training, opt: torch.optim.Optimizer, loss: torch.Tensor, epoch: int) -> float:
    """One optimiser update from `loss`; its value."""
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        raise CdtoolError(f"epoch {epoch + 1}: the loss became {float(loss.detach())} (training failed, the input is "
                          "not at fault); lower optim.lr or set schedule.clip_grad")
    run.scaler.scale(loss).backward()
    if run.recipe.schedule.clip_grad:
        run.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                       run.recipe.schedule.clip_grad)
    run.scaler.step(opt)
    run.scaler.update()
    return float(loss.detach())


def _card(recipe: Recipe, train_set, row: dict, model_args: dict) -> dict:
    """The domain a trained model can vouch for: its band count and data. The GSD and the kind of change are
    not known to the engine (PNG crops carry no georeference), so they stay unrecorded and such a model is
    never picked as a default; `cdtool info` shows what is known."""
    channels = getattr(train_set, "channels", None) or model_args.get("in_channels")
    args = recipe.data.source_args(recipe.primary_source())
    roots = args.get("roots") or args.get("root") or args.get("source") or []
    return {"band_count": channels, "value_range": "any (normalisation: " + recipe.normalization.get("mode", "?") + ")",
            "change": "not recorded", "data": ", ".join(map(str, roots if isinstance(roots, list) else [roots]))
            + f" ({len(getattr(train_set, 'names', None) or [])} training pairs)", "recipe": recipe.name,
            "scores": {"validation": {k: row[k] for k in ("val_f1", "val_iou", "val_auroc")
                                      if isinstance(row.get(k), float) and not math.isnan(row[k])}}}
