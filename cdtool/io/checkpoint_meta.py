"""What a checkpoint's metadata holds, typed and versioned, so every reader (detect, evaluate, info, the
default-model choice) gets the same checked values and a file this version cannot read is refused in one line
before anything is built from it.

`format_version` 1 is the layout every cdtool checkpoint has had so far, including the shipped weights, which
were written before the field existed: a file without it is version 1. A later layout raises FORMAT_VERSION
and adds an upgrade from the one before to `_UPGRADES`, so older files keep loading; a file newer than this
cdtool is refused rather than half-understood. Keys beyond the declared fields (provenance such as the
shipped weights' `train` notes) are kept as written.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from cdtool.domain import ModelCard
from cdtool.errors import InputError
from cdtool.normalization import check as check_normalization

FORMAT_VERSION = 1
THRESHOLD_METHODS = ("otsu", "kmeans", "gmm")
# version -> the function taking that version's metadata (a dict) to the next version's
_UPGRADES: dict[int, Callable[[dict], dict]] = {}


class ModelRecord(BaseModel):
    """The registered model the weights belong to and the arguments it is built with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    args: dict[str, Any] = {}


class CheckpointMeta(BaseModel):
    """The `cdtool` metadata entry of a checkpoint: what detection needs (model, normalisation, threshold,
    bands, card) and where training stood (task, phase, epoch, metrics, pairs seen, the resolved recipe)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format_version: int = FORMAT_VERSION
    model: ModelRecord
    normalization: dict[str, Any]
    threshold: float | str = 0.5  # a probability, or a method picking one per image
    bands: list[str] | None = None  # band names the model was trained on, if recorded
    card: dict[str, Any] | None = None  # the training domain (cdtool.domain.ModelCard); None: not recorded
    task: str | None = None
    phase: str | None = None
    epoch: int | None = None
    metrics: dict[str, float] = {}
    train_pairs: list[str] = []
    val_pairs: list[str] = []
    recipe: dict[str, Any] | None = None

    @field_validator("normalization")
    @classmethod
    def _normalization(cls, value: dict) -> dict:
        return check_normalization(value)

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (value in THRESHOLD_METHODS or number and 0 <= value <= 1):
            raise InputError(f"checkpoint threshold must be a number in [0, 1] or a method name, got {value!r}")
        return value

    @model_validator(mode="after")
    def _card(self) -> "CheckpointMeta":
        self.model_card  # a malformed card is refused with the rest of the metadata
        return self

    @property
    def model_card(self) -> ModelCard:
        """The card; checkpoints from before cards know only their band count (the model's `in_channels`)."""
        return ModelCard.from_card(self.card, band_count=self.model.args.get("in_channels", 3))

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


def parse_meta(raw: Any, path) -> CheckpointMeta:
    """Checked metadata of the checkpoint at `path` (named in every refusal), upgraded to FORMAT_VERSION."""
    if not isinstance(raw, dict):
        raise InputError(f"{path}: checkpoint metadata is not a mapping")
    version = raw.get("format_version", 1)
    if type(version) is not int or version < 1:
        raise InputError(f"{path}: checkpoint format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format version {version} is newer than this cdtool reads "
                         f"({FORMAT_VERSION}); upgrade cdtool to load it")
    for v in range(version, FORMAT_VERSION):
        raw = _UPGRADES[v](raw)
    try:
        return CheckpointMeta.model_validate({**raw, "format_version": FORMAT_VERSION})
    except ValidationError as exc:
        raise InputError(f"{path}: checkpoint metadata {_first_problem(exc)}") from None
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def _first_problem(exc: ValidationError) -> str:
    """One phrase for the first thing wrong, naming the key: 'lacks model.name', 'model.args is not a mapping'."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "missing":
        return f"lacks {where}"
    if err["type"] in ("dict_type", "model_type"):
        return f"{where} is not a mapping"
    return f"{where}: {err['msg'][0].lower()}{err['msg'][1:]}, got {err.get('input')!r}"[:300]
