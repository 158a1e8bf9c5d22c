"""A ready-to-run detector: the model, the normalisation it expects and its threshold, resolved from a
registry name or a checkpoint file, so the pipeline never cares where a model came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from cdtool.engine.checkpoint import load_checkpoint
from cdtool.errors import InputError
from cdtool.models.base import ChangeModel
from cdtool.models.registry import create_model, model_entry
from cdtool.normalization import check as check_normalization

# Trained defaults ship as cdtool/weights/default_<N>band.safetensors, one per band layout (e.g. 3 for
# RGB aerial photos, 13 for Sentinel-2); an input with no matching default falls back to FALLBACK_MODEL.
DEFAULT_WEIGHTS = "default_{count}band.safetensors"
FALLBACK_MODEL = "cva"


@dataclass
class Detector:
    name: str
    model: ChangeModel
    normalization: dict
    threshold: float | str  # a probability, or "otsu" to pick one per image
    bands: list[str] | None = None  # band names the model was trained on, if recorded
    meta: dict = field(default_factory=dict)

    @property
    def halo(self) -> int:
        return int(getattr(self.model, "halo", 0))

    @property
    def size_multiple(self) -> int:
        return int(getattr(self.model, "size_multiple", 1))


def default_weights(band_count: int | None) -> Path | None:
    if band_count is None:
        return None
    path = Path(str(resources.files("cdtool") / "weights" / DEFAULT_WEIGHTS.format(count=band_count)))
    return path if path.is_file() else None


def load_detector(spec: str | None = None, band_count: int | None = None) -> Detector:
    """`spec` is a registry name, a checkpoint path, or None for the default: the trained weights shipped
    for inputs of `band_count` bands when present, else change vector analysis."""
    if spec is None:
        shipped = default_weights(band_count)
        return _from_checkpoint(shipped) if shipped else _from_registry(FALLBACK_MODEL)
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise InputError(f"{path}: no such checkpoint file")
        return _from_checkpoint(path)
    return _from_registry(spec)


def _from_registry(name: str) -> Detector:
    entry = model_entry(name)
    model = create_model(name)
    if any(p.requires_grad for p in model.parameters()):
        raise InputError(f"model {name!r} must be trained first: pass a checkpoint from `cdtool train` "
                         "(the classical detector 'cva' needs none)")
    return Detector(entry.name, model.eval(), dict(getattr(model, "default_normalization", {"mode": "per-image"})),
                    getattr(model, "default_threshold", "otsu"))


def _from_checkpoint(path: Path) -> Detector:
    states, meta = load_checkpoint(path)
    try:
        name, args = meta["model"]["name"], meta["model"].get("args", {})
        normalization = check_normalization(meta["normalization"])
    except (KeyError, TypeError):
        raise InputError(f"{path}: checkpoint metadata lacks model name or normalisation") from None
    model = create_model(name, **args)
    if "model" not in states and len(model.state_dict()):
        raise InputError(f"{path}: checkpoint holds no 'model' weights")
    try:
        model.load_state_dict(states.get("model", {}))
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit model {name!r} ({str(exc).splitlines()[0]})") from None
    threshold = meta.get("threshold", 0.5)
    return Detector(name, model.eval(), normalization, threshold, meta.get("bands"), meta)


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but no CUDA GPU is available here")
    return torch.device(device)
