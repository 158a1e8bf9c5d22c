"""The task contract: what a training method owns, as opposed to the loop (cdtool.engine.loop), which owns
devices, seeding, data draws, phases, logging, checkpoints, resume and DDP.

A task family declares the module roles, loss roles and data sources its recipes must name, its phases, and
may check a recipe further. An instance builds its modules from the recipe, may make a pass over the data
before a phase (a latent centre, a k-means fit; also in a zero-epoch phase), trains on a dict of batches
(one per named source) by yielding one loss per optimiser, may act after each step (a teacher update), is
validated, and exports the module that detects. Each family lives in one module of `cdtool.tasks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Iterator

import torch
import torch.nn as nn

from cdtool.errors import InputError
from cdtool.io.checkpoint_meta import CheckpointMeta, ModelRecord
from cdtool.losses.base import create_loss
from cdtool.metrics import BinaryMetrics
from cdtool.models.registry import create_model, model_entry
from cdtool.normalization import normalize_stack
from cdtool.registry import Registry

if TYPE_CHECKING:
    from cdtool.engine.schema import RecipeBase

Step = Iterator[tuple[str, torch.Tensor, dict[str, float]]]  # (optimiser name, loss, numbers to log)


def build_optimizer(params, cfg, lr: float | None = None) -> torch.optim.Optimizer:
    """The recipe's optimiser over `params` (or parameter groups), at `lr` when a phase sets one."""
    lr = cfg.lr if lr is None else lr
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=cfg.weight_decay)


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def param_groups(modules: dict[str, nn.Module], lr: float, factors: dict[str, float],
                 frozen: list[str] = ()) -> list[dict]:
    """Trainable parameters of `modules` (named ``role.param``) grouped by learning rate: each takes the
    factor of the longest prefix in `factors` that names it (1 otherwise); `frozen` prefixes are left out."""
    groups: dict[float, list[nn.Parameter]] = {}
    for role, mod in modules.items():
        for pname, p in mod.named_parameters():
            full = f"{role}.{pname}"
            if not p.requires_grad or any(_matches(full, f) for f in frozen):
                continue
            hits = [k for k in factors if _matches(full, k)]
            factor = factors[max(hits, key=len)] if hits else 1.0
            groups.setdefault(factor, []).append(p)
    return [{"params": ps, "lr": lr * f} for f, ps in groups.items()]


class TrainOutputs(nn.Module):
    """Wraps a model so its ``forward`` returns the training outputs: DDP then sees (and synchronises)
    the forward it wraps, while the model's own ``forward`` keeps the detection contract."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return self.model.forward_train(*args, **kwargs)


class PhaseContext:
    """What a before-phase pass may read: each source's dataset in order (no augmentation), on the device."""

    def __init__(self, datasets: dict[str, torch.utils.data.Dataset], device: torch.device, workers: int = 0):
        self.datasets, self.device, self.workers = datasets, device, workers

    def batches(self, source: str, batch_size: int = 64) -> Iterator[dict]:
        from torch.utils.data import DataLoader

        for batch in DataLoader(self.datasets[source], batch_size=batch_size, num_workers=self.workers):
            yield {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}


class Task:
    """The shape of FC-Siam and CosimNet training: one model, one loss, one source, one optimiser."""

    name: ClassVar[str]
    phases: ClassVar[tuple[str, ...]] = ("train",)
    models: ClassVar[dict[str, str]] = {"model": "the change detector"}
    losses: ClassVar[dict[str, str]] = {}
    sources: ClassVar[dict[str, str]] = {}
    # the sources a phase draws when the recipe's phase does not say (default: every source)
    phase_sources: ClassVar[dict[str, tuple[str, ...]]] = {}
    detector: ClassVar[str] = "model"  # the role whose module `cdtool detect` runs

    @classmethod
    def check(cls, recipe: RecipeBase) -> None:
        """Rules of this family beyond its roles; raise ValueError naming the key at fault."""

    def __init__(self, recipe: RecipeBase, channels: int | None, device: torch.device, init: bool = True):
        self.recipe, self.device = recipe, device
        self.model_args = {role: self.module_args(role, dict(cfg.args), channels) for role, cfg in recipe.models.items()}
        self.nets: dict[str, nn.Module] = {}
        for role, cfg in recipe.models.items():
            self.nets[role] = create_model(cfg.name, **self.model_args[role])
            if cfg.init and init:
                load_init(self.nets[role], cfg.init, f"models.{role}.init")
        self.loss_fns = {role: create_loss(cfg.name, **cfg.args) for role, cfg in recipe.losses.items()}
        self.build()
        for mod in self.modules().values():
            mod.to(device)

    def module_args(self, role: str, args: dict, channels: int | None) -> dict:
        """A module's builder arguments: in_channels filled from the data when the builder takes it."""
        import inspect

        params = inspect.signature(model_entry(self.recipe.models[role].name).builder).parameters
        if "in_channels" in params and "in_channels" not in args and channels is not None:
            args["in_channels"] = int(channels)
        return args

    def build(self) -> None:
        """Further set-up once `nets` and `loss_fns` exist (e.g. modules that are not registered models)."""

    def modules(self) -> dict[str, nn.Module]:
        """Every module with state: saved in checkpoints by name and restored on resume."""
        return self.nets

    def check_data(self, datasets: dict[str, torch.utils.data.Dataset]) -> None:
        """Refuse training data the modules cannot take (e.g. a crop that is not a size multiple)."""
        mult = int(self.nets[self.detector].size_multiple)
        for source, data in datasets.items():
            crop = getattr(data, "crop", None)
            if crop and crop % mult:
                raise InputError(f"data.train.{source}.args.crop: {crop} is not a multiple of {mult}, which model "
                                 f"{self.recipe.models[self.detector].name!r} needs; use e.g. {max(mult, crop // mult * mult)}")

    def optimizers(self, wrapped: dict[str, nn.Module], phase: str, lr: float | None,
                   frozen: list[str], factors: dict[str, float]) -> dict[str, torch.optim.Optimizer]:
        """Fresh optimisers at the start of `phase`: by default one over every trainable module, at the
        phase's learning rate times each parameter's group factor."""
        base = self.recipe.optim.lr if lr is None else lr
        return {"model": build_optimizer(param_groups(self.modules(), base, factors, frozen), self.recipe.optim, lr)}

    def before_phase(self, phase: str, ctx: PhaseContext) -> None:
        """A pass over data before `phase` starts (not when resuming inside it); keep what it computes in
        module buffers so checkpoints carry it."""

    def training_step(self, wrapped: dict[str, nn.Module], batches: dict[str, dict], phase: str) -> Step:
        """Yield (optimiser name, loss, parts) per update; the loop steps that optimiser before going on.
        `wrapped` holds the modules as training calls them (`TrainOutputs`, DDP when distributed)."""
        raise NotImplementedError

    def after_step(self, phase: str) -> None:
        """Called after every optimiser of a step has stepped (e.g. a teacher's moving average)."""

    def validate(self, loader, device: torch.device, amp: bool) -> BinaryMetrics:
        """Metrics at threshold 0.5 plus the score histograms the threshold is tuned on: dense maps
        against the change masks of whole validation pairs."""
        from cdtool.engine.evaluate import evaluate_loader

        return evaluate_loader(self.nets[self.detector], loader, self.recipe.normalization, device, 0.5, amp)

    def export(self, **provenance) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
        """(metadata, state) of the module `cdtool detect` builds from a checkpoint: the model record (name,
        arguments) and the recipe's normalisation, with the loop's `provenance` (threshold, phase, epoch, ...)."""
        model = ModelRecord(name=self.recipe.models[self.detector].name, args=self.model_args[self.detector])
        meta = CheckpointMeta(model=model, normalization=self.recipe.normalization, task=self.recipe.task,
                              **provenance)
        return meta, self.nets[self.detector].state_dict()

    def inputs(self, batch: dict) -> torch.Tensor:
        """`batch["image"]` (B, T, C, H, W) normalised as the recipe says (and as detection will)."""
        return normalize_stack(batch["image"], self.recipe.normalization, batch.get("mean"), batch.get("std"))

    def pair(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs(batch)
        if x.shape[1] != 2:
            raise InputError(f"task {self.name!r} needs image pairs; this data has {x.shape[1]} date(s) per sample")
        return x[:, 0], x[:, 1]


TASKS: Registry[type[Task]] = Registry("task", "cdtool.tasks")


def register_task(cls: type[Task]) -> type[Task]:
    """Make a task family available to recipes (key `task`) under its `name`."""
    return TASKS.register(cls.name)(cls)


def load_init(model: nn.Module, path: str, key: str = "init") -> tuple[list[str], list[str]]:
    """Initialise from a local weights file by parameter name (e.g. a pretrained backbone): safetensors
    (a cdtool checkpoint's 'model' state or a plain state dict) or a weights-only torch file."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{key}: {p}: no such weights file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        from safetensors import SafetensorError

        try:
            flat = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{key}: {p}: not a readable safetensors file ({exc})") from None
        state = {k.removeprefix("model."): v for k, v in flat.items()}
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle with code in it, or not a torch file at all
            raise InputError(f"{key}: {p}: not a weights-only torch file ({exc})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fit:
        raise InputError(f"{key}: {p}: no parameter matches the model by name and shape")
    model.load_state_dict(fit, strict=False)
    return sorted(fit), sorted(set(own) - set(fit))

