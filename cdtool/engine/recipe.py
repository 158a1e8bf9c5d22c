"""Recipes: one YAML file per experiment, validated before anything runs.

A recipe names a task family, a model and a loss by registry name with their arguments, the data, the
optimiser and the schedule. Validation names the bad key and lists the allowed values; ``--set a.b=c``
overrides any key (the value parsed as YAML). The resolved recipe (defaults filled in, in_channels
inferred from the data) is written to the run folder and stored inside every checkpoint.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cdtool.errors import InputError
from cdtool.losses.base import loss_entry, loss_names
from cdtool.models.registry import model_entry, model_names
from cdtool.normalization import check as check_normalization


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_args(builder, args: dict, where: str) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in args:
        if key not in params:
            raise ValueError(f"{where} has no argument {key!r}; allowed: {', '.join(params) or 'none'}")


class _Registered(_Strict):
    """A registry name and its builder's keyword arguments, both checked against the registry, so an error
    names the unknown entry or argument and lists what is allowed."""

    kind: ClassVar[str]
    names: ClassVar[Callable[[], list[str]]]
    entry: ClassVar[Callable[[str], Any]]
    name: str
    args: dict[str, Any]

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in cls.names():
            raise ValueError(f"unknown {cls.kind} {v!r}; allowed: {', '.join(cls.names())}")
        return v

    @model_validator(mode="after")
    def _args(self) -> "_Registered":
        _check_args(self.entry(self.name).builder, self.args, f"{self.kind} {self.name!r}")
        return self


class ModelConfig(_Registered):
    kind, names, entry = "model", staticmethod(model_names), staticmethod(model_entry)
    name: str = Field(description="Registered model name (see `cdtool models`).")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the model builder.")
    init: str | None = Field(None, description="Local weights file (safetensors, or a weights-only torch file) to "
                             "initialise from before training, matching parameters by name, e.g. a backbone.")


class LossConfig(_Registered):
    kind, names, entry = "loss", staticmethod(loss_names), staticmethod(loss_entry)
    name: str = Field(description="Registered loss name: " + ", ".join(loss_names()) + ".")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the loss.")


class DataConfig(_Strict):
    kind: Literal["folder", "chips"] = Field("folder", description="Dataset kind (cdtool.data.registry).")
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments shared by the train and val sets "
                                 "(folder: roots, bands; chips: root).")
    train: dict[str, Any] = Field(default_factory=dict, description="Arguments of the training set (folder: pairs, "
                                  "exclude, crop, samples, augment, shift; chips: split).")
    val: dict[str, Any] | None = Field(None, description="Arguments of the validation set (folder: whole pairs, "
                                       "crop is forced off); none: no validation, the last epoch is kept.")
    sampler: Literal["random", "under", "over"] = Field(
        "random", description="Training order: random, or per-epoch random under-/over-sampling of the classes "
        "of labelled samples (paper 000's baselines).")
    sampler_ratio: float = Field(1.0, gt=0, description="under: samples kept of each larger class per sample of "
                                 "the rarest one.")
    batch_size: int = Field(8, ge=1, description="Training batch size (per process under DDP).")
    workers: int = Field(0, ge=0, description="DataLoader worker processes.")


class OptimConfig(_Strict):
    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimiser.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by Adam).")


class ScheduleConfig(_Strict):
    epochs: int = Field(10, ge=1, description="Number of epochs.")
    scheduler: Literal["none", "cosine", "step"] = Field("cosine", description="Learning-rate schedule per epoch.")
    step_size: int = Field(10, ge=1, description="Epochs between decays (step).")
    gamma: float = Field(0.1, gt=0, description="Decay factor (step).")
    clip_grad: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")


class PhaseConfig(_Strict):
    name: str = Field(description="A phase of the task, in the task's order (e.g. vae: represent, finetune).")
    epochs: int = Field(ge=1, description="Epochs of this phase.")
    lr: float | None = Field(None, gt=0, description="Learning rate of this phase (default: optim.lr).")
    sampler: Literal["random", "under", "over"] | None = Field(None, description="Training order of this "
                                                               "phase (default: data.sampler).")
    train: dict[str, Any] = Field(default_factory=dict, description="Overrides of data.train for this phase "
                                  "(e.g. another split or crop).")


class Recipe(_Strict):
    name: str = Field(description="Run name: the run folder is runs/<name>/ unless --out is given.")
    description: str = Field("", description="What the experiment is for.")
    task: str = Field(description="Task family (cdtool.engine.tasks): dense (change logits), metric (feature "
                      "distance maps) or patch (one change logit per labelled patch pair).")
    model: ModelConfig
    loss: LossConfig
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    phases: list[PhaseConfig] | None = Field(None, description="Phases run in order, each with its epochs and "
                                             "optionally its learning rate, sampler and data; none: the task's "
                                             "first phase for schedule.epochs.")
    normalization: dict[str, Any] = Field(default_factory=lambda: {"mode": "per-image"},
                                          description="Input normalisation, stored with the model.")
    threshold: Union[float, Literal["tune"]] = Field("tune", description="Detection threshold on the change score, "
                                                     "or 'tune': the best-F1 threshold on the validation pairs.")
    monitor: Literal["f1", "iou", "kappa", "miou", "auroc", "loss"] = Field(
        "f1", description="Validation score that picks best.safetensors (loss: training loss, lower is better).")
    seed: int = Field(0, description="Seed of weights, crops and order: CPU runs repeat bit for bit.")
    amp: bool = Field(True, description="Automatic mixed precision on CUDA (ignored on CPU).")

    @field_validator("normalization")
    @classmethod
    def _norm(cls, v: dict) -> dict:
        try:
            return check_normalization(v)
        except InputError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from cdtool.engine.tasks import TASKS

        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}; allowed: {', '.join(TASKS.names())}")
        return v

    @model_validator(mode="after")
    def _phases_of_the_task(self) -> "Recipe":
        from cdtool.engine.tasks import TASKS

        if self.phases is not None:
            declared = TASKS.get(self.task).phases
            names = [ph.name for ph in self.phases]
            order = [declared.index(n) for n in names if n in declared]
            if len(order) != len(names) or order != sorted(set(order)):
                raise ValueError(f"phases {names} are not phases of task {self.task!r} in its order "
                                 f"({', '.join(declared)}), each at most once")
        return self

    def phase_plan(self) -> list[PhaseConfig]:
        """The phases to run, in order: as given, or the task's first phase for schedule.epochs."""
        if self.phases:
            return list(self.phases)
        from cdtool.engine.tasks import TASKS

        return [PhaseConfig(name=TASKS.get(self.task).phases[0], epochs=self.schedule.epochs)]

    @model_validator(mode="after")
    def _loss_fits_model(self) -> "Recipe":
        if self.task == "metric" and loss_entry(self.loss.name).needs == ("logits",):
            raise ValueError(f"task 'metric' needs a metric loss, not {self.loss.name!r}")
        if self.task == "patch" and loss_entry(self.loss.name).needs != ("logits",):
            raise ValueError(f"task 'patch' needs a loss on logits (bce), not {self.loss.name!r}")
        centre = model_entry(self.model.name).output == "centre"
        if (self.task == "patch") != centre:
            raise ValueError(f"model {self.model.name!r} gives {'one score per patch' if centre else 'dense maps'}; "
                             f"train it with task {'patch' if centre else 'dense or metric'}, not {self.task!r}")
        return self


def set_key(tree: dict, dotted: str, value: Any) -> None:
    """Set tree['a']['b'] = value for 'a.b', creating dicts on the way."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.001")
        set_key(tree, key.strip(), yaml.safe_load(text))
    return tree


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "recipe"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = _model_at(err["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else ""
            msg = f"unknown key; allowed: {allowed}"
        elif err["type"] == "missing":
            msg = "missing (required)"
        lines.append(f"{loc}: {msg}")
    return "invalid recipe: " + "; ".join(lines)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def parse_recipe(tree: dict) -> Recipe:
    try:
        return Recipe.model_validate(tree)
    except ValidationError as exc:
        raise InputError(_format(exc)) from None


def load_recipe(source: str | Path | dict, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or a dict), apply --set overrides, validate."""
    if isinstance(source, dict):
        tree = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: no such recipe file")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(tree, dict):
            raise InputError(f"{path}: a recipe is a mapping of keys (name, task, model, loss, data, ...)")
        tree = resolve_paths(tree, path.resolve().parent)
    return parse_recipe(apply_overrides(tree, overrides or []))


def resolve_paths(tree: dict, base: Path) -> dict:
    """Relative data roots and init weights of a recipe file are relative to that file, so a recipe runs from
    any folder; the run stores them absolute, so `--resume` does too. Overrides given with --set stay as typed
    (relative to where the command runs)."""
    def fix(p):
        return p if not isinstance(p, str) or Path(p).is_absolute() else str((base / p).resolve())

    tree = dict(tree)
    data = tree.get("data")
    if isinstance(data, dict) and isinstance(data.get("args"), dict):
        args = dict(data["args"])
        for key in ("roots", "root"):
            if key in args:
                args[key] = [fix(p) for p in args[key]] if isinstance(args[key], list) else fix(args[key])
        tree["data"] = dict(data, args=args)
    model = tree.get("model")
    if isinstance(model, dict) and model.get("init"):
        tree["model"] = dict(model, init=fix(model["init"]))
    return tree


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
