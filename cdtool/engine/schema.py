"""The parts of a recipe, as pydantic models: every key described, unknown keys refused, registry names and
builder arguments checked, so an error names the bad key and lists what is allowed.

`RecipeBase` holds what every task family shares; `cdtool.engine.recipe` derives one recipe type per
registered family (its `task` literal, its module, loss and source roles, its own `check`) and validates a
file against their discriminated union.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cdtool.data.registry import DATASETS
from cdtool.errors import InputError
from cdtool.losses.base import LOSSES
from cdtool.models.registry import MODELS
from cdtool.normalization import check as check_normalization
from cdtool.registry import Registry

Sampler = Literal["random", "under", "over"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_args(builder: Callable, args: dict, where: str) -> None:
    """Refuse keyword arguments the builder does not take, listing those it does."""
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in args:
        if key not in params:
            raise ValueError(f"{where} has no argument {key!r}; allowed: {', '.join(params) or 'none'}")


class Registered(Strict):
    """A registry name and its builder's keyword arguments, both checked against the registry."""

    registry: ClassVar[Registry]
    name: str
    args: dict[str, Any]

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in cls.registry:
            raise ValueError(f"unknown {cls.registry.kind} {v!r}; allowed: {', '.join(cls.registry.names())}")
        return v

    @model_validator(mode="after")
    def _args(self) -> "Registered":
        check_args(self.registry.get(self.name), self.args, f"{self.registry.kind} {self.name!r}")
        return self


class ModelConfig(Registered):
    registry: ClassVar[Registry] = MODELS
    name: str = Field(description="Registered model name (see `cdtool models`).")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the model builder; "
                                 "in_channels is filled from the data when left out.")
    init: str | None = Field(None, description="Local weights file (safetensors, or a weights-only torch file) to "
                             "initialise from before training, matching parameters by name, e.g. a backbone.")


class LossConfig(Registered):
    registry: ClassVar[Registry] = LOSSES
    name: str = Field(description="Registered loss name (see `cdtool models`).")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the loss.")


def known_kind(kind: str) -> str:
    if kind not in DATASETS:
        raise ValueError(f"unknown data.kind {kind!r}; allowed: {', '.join(DATASETS.names())}")
    return kind


class AugmentConfig(Strict):
    """Drawn per sample on the training device (kornia): geometry shared by both dates and the mask,
    photometry per date. Seeded by (seed, epoch, source), so a resumed run draws the same."""

    hflip: float = Field(0.0, ge=0, le=1, description="Probability of a left-right flip.")
    vflip: float = Field(0.0, ge=0, le=1, description="Probability of an up-down flip.")
    rot90: bool = Field(False, description="A random quarter turn (0-3).")
    degrees: float = Field(0.0, ge=0, le=180, description="Random rotation within ± degrees.")
    scale: float = Field(0.0, ge=0, lt=1, description="Random scaling within 1 ± scale.")
    gain: float = Field(0.0, ge=0, lt=1, description="Contrast factor within 1 ± gain, per date.")
    offset: float = Field(0.0, ge=0, description="Offset within ± offset × the image's std, per date.")
    noise: float = Field(0.0, ge=0, description="Gaussian noise, std as a share of the image's std, per date.")


class SourceConfig(Strict):
    kind: str = Field("folder", description="Dataset kind (cdtool.data.registry): " + ", ".join(DATASETS.names()))
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments of the dataset (merged over data.args), "
                                 "and for every kind: labels, positives, subset, resize.")
    batch_size: int = Field(8, ge=1, description="Batch size of this source (per process under DDP).")
    sampler: Sampler = Field("random", description="Order: random, or per-epoch random under-/over-sampling of the "
                             "classes of labelled samples.")
    sampler_ratio: float = Field(1.0, gt=0, description="under: samples kept of each larger class per sample of the "
                                 "rarest one.")
    augment: AugmentConfig | None = Field(None, description="Augmentation of this source's batches; none: off.")

    @field_validator("kind")
    @classmethod
    def _known(cls, v: str) -> str:
        return known_kind(v)


class ValConfig(Strict):
    kind: str = Field("folder", description="Dataset kind of the validation set.")
    args: dict[str, Any] = Field(default_factory=dict, description="Its arguments (merged over data.args); "
                                 "folder pairs are whole (no crop).")

    @field_validator("kind")
    @classmethod
    def _known(cls, v: str) -> str:
        return known_kind(v)


class DataConfig(Strict):
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments shared by every source and the "
                                 "validation set (e.g. roots, root, bands); selections (labels, positives, "
                                 "subset) here would thin the validation set too: give them per source.")
    train: dict[str, SourceConfig] = Field(description="Named training sources; each step draws one batch of each "
                                           "(the longest sets the epoch, shorter ones are cycled).")
    val: ValConfig | None = Field(None, description="Validation set; none: no validation, the last epoch is kept.")
    workers: int = Field(0, ge=0, description="DataLoader worker processes.")

    @field_validator("train")
    @classmethod
    def _some(cls, v: dict) -> dict:
        if not v:
            raise ValueError("name at least one training source")
        return v

    def source_args(self, name: str) -> dict:
        return {**self.args, **self.train[name].args}

    def val_args(self) -> dict:
        return {**self.args, **(self.val.args if self.val else {})}


class OptimConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimiser.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by Adam).")
    groups: dict[str, float] = Field(default_factory=dict, description="Learning-rate factor per module role or "
                                     "parameter-name prefix, e.g. {encoder: 0.1}; the longest matching prefix wins.")


class ScheduleConfig(Strict):
    epochs: int = Field(10, ge=1, description="Number of epochs (when no phases are given).")
    scheduler: Literal["none", "cosine", "step", "multistep"] = Field(
        "cosine", description="Learning-rate schedule per epoch, restarted in each phase.")
    step_size: int = Field(10, ge=1, description="Epochs between decays (step).")
    gamma: float = Field(0.1, gt=0, description="Decay factor (step, multistep).")
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs of a phase (counted from its "
                                  "start) after which the lr is multiplied by gamma, e.g. [3, 6, 9].")
    clip_grad: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")

    @model_validator(mode="after")
    def _milestones(self) -> "ScheduleConfig":
        m = self.milestones
        if self.scheduler == "multistep" and not m:
            raise ValueError("schedule.scheduler multistep needs schedule.milestones, e.g. [3, 6, 9]")
        if any(v < 1 for v in m) or m != sorted(set(m)):
            raise ValueError(f"schedule.milestones must be increasing epochs >= 1, got {m}")
        return self


class PhaseConfig(Strict):
    name: str = Field(description="A phase of the task, in the task's order (`cdtool models` lists them).")
    epochs: int = Field(ge=0, description="Epochs of this phase; 0: only its pass over data before it runs.")
    lr: float | None = Field(None, gt=0, description="Learning rate of this phase (default: optim.lr).")
    sampler: Sampler | None = Field(None, description="Order of the first training source in this phase "
                                    "(default: its own).")
    train: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Overrides of a source's args in this "
                                             "phase: {source: {arg: value}} (e.g. another split).")
    freeze: list[str] = Field(default_factory=list, description="Module roles (or parameter-name prefixes) frozen "
                              "in this phase: eval mode, no gradients, not optimised, not DDP-wrapped.")
    groups: dict[str, float] | None = Field(None, description="Learning-rate factors of this phase "
                                            "(default: optim.groups).")
    sources: list[str] | None = Field(None, description="The training sources drawn in this phase, in the order of "
                                      "data.train (default: those the task's phase uses, else all).")


class RecipeBase(Strict):
    """What every task family's recipe holds; a family's recipe type adds its `task` literal and checks."""

    family: ClassVar[Any] = None  # the task class, set on each family's recipe type
    name: str = Field(description="Run name: the run folder is runs/<name>/ unless --out is given.")
    description: str = Field("", description="What the experiment is for.")
    task: str = Field(description="Task family (`cdtool models` lists them).")
    models: dict[str, ModelConfig] = Field(description="The modules the task builds, by role.")
    losses: dict[str, LossConfig] = Field(default_factory=dict, description="The losses the task uses, by role.")
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    phases: list[PhaseConfig] | None = Field(None, description="Phases run in order, each with its epochs and "
                                             "optionally its learning rate, sampler, data, frozen modules; none: "
                                             "the task's first phase for schedule.epochs.")
    normalization: dict[str, Any] = Field(default_factory=lambda: {"mode": "per-image"},
                                          description="Input normalisation, stored with the model.")
    threshold: Union[float, Literal["tune"]] = Field("tune", description="Detection threshold on the change score, "
                                                     "or 'tune': the best-F1 threshold on the validation data.")
    monitor: Literal["f1", "iou", "kappa", "miou", "auroc", "loss"] = Field(
        "f1", description="Validation score that picks best.safetensors (loss: training loss, lower is better).")
    seed: int = Field(0, description="Seed of weights, crops, order and augmentation: CPU runs repeat bit for bit.")
    amp: bool = Field(True, description="Automatic mixed precision on CUDA (ignored on CPU).")

    @field_validator("normalization")
    @classmethod
    def _norm(cls, v: dict) -> dict:
        try:
            return check_normalization(v)
        except InputError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _fits_family(self) -> "RecipeBase":
        fam = type(self).family
        if fam is None:
            return self
        for key, need, have in (("models", fam.models, self.models), ("losses", fam.losses, self.losses),
                                ("data.train", fam.sources, self.data.train)):
            missing, extra = sorted(set(need) - set(have)), sorted(set(have) - set(need))
            if missing or extra:
                wants = "; ".join(f"{k}: {v}" for k, v in need.items()) or "none"
                raise ValueError(f"task {self.task!r} takes {key} {sorted(need)} ({wants}); "
                                 + (f"missing {missing}" if missing else f"unknown {extra}"))
        if self.phases is not None:
            names = [ph.name for ph in self.phases]
            order = [fam.phases.index(n) for n in names if n in fam.phases]
            if len(order) != len(names) or order != sorted(set(order)):
                raise ValueError(f"phases {names} are not phases of task {self.task!r} in its order "
                                 f"({', '.join(fam.phases)}), each at most once")
            if not any(ph.epochs for ph in self.phases):
                raise ValueError("phases: every phase has 0 epochs; nothing would be trained")
            for ph in self.phases:
                unknown = sorted(set(ph.sources or []) - set(self.data.train))
                if unknown or ph.sources == []:
                    raise ValueError(f"phases.{ph.name}.sources: {unknown or 'none'} given; the training sources "
                                     f"are {list(self.data.train)}")
        fam.check(self)
        return self

    def phase_plan(self) -> list[PhaseConfig]:
        """The phases to run, in order: as given, or the task's first phase for schedule.epochs."""
        if self.phases:
            return list(self.phases)
        return [PhaseConfig(name=type(self).family.phases[0], epochs=self.schedule.epochs)]

    def phase_sources(self, phase: PhaseConfig) -> list[str]:
        """The training sources a phase draws, in data.train's order: the phase's `sources`, else the task's
        for that phase (`phase_sources`), else all of them."""
        fam = type(self).family
        want = phase.sources or (getattr(fam, "phase_sources", {}).get(phase.name) if fam else None)
        return [n for n in self.data.train if want is None or n in want]

    def primary_source(self) -> str:
        return next(iter(self.data.train))
