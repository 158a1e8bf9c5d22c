"""A ready-to-run detector: the model, the normalisation it expects and its threshold, resolved from a
registry name, shipped weights or a checkpoint file (cdtool.inference.model_spec), so the pipeline never
cares where a model came from."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cdtool.domain import InputDomain, ModelCard, mismatches, scale_factor
from cdtool.io.checkpoint import check_finite, load_checkpoint, read_meta
from cdtool.io.checkpoint_meta import CheckpointMeta
from cdtool.errors import InputError, OptionError
from cdtool.inference.centre_patch import as_dense
from cdtool.inference.model_spec import ModelSpec, shipped_weights
from cdtool.models.base import ChangeModel
from cdtool.models.registry import create_model, model_entry

# Trained models ship as cdtool/weights/<name>.safetensors, each with a card stating its domain; `--model
# <name>` loads one. One becomes the default only where its card names `usable_gsd_m`, the GSDs at which it
# beat the label-free methods on sources left out of its training (benchmarks/domain_table.py); elsewhere
# the default is the label-free method that scored best there, by band layout (README "Default model").
LABEL_FREE_DEFAULT = {"rgb": "cva", "multispectral": "cva"}
# Dates from two sensors (SAR beside optical) cannot be compared value by value; this model compares each date
# only with itself (README "Dates from two sensors").
CROSS_SENSOR_DEFAULT = "patch_structure"


@dataclass
class Detector:
    name: str
    model: ChangeModel
    normalization: dict
    threshold: float | str  # a probability, or "otsu" to pick one per image
    bands: list[str] | None = None  # band names the model was trained on, if recorded
    meta: CheckpointMeta | None = None  # a checkpoint's metadata; None for a registered model
    card: ModelCard = field(default_factory=ModelCard)

    @property
    def halo(self) -> int:
        return int(self.model.halo)

    @property
    def exact_halo(self) -> bool:
        return bool(self.model.exact_halo)

    @property
    def size_multiple(self) -> int:
        return int(self.model.size_multiple)


@dataclass
class Choice:
    """The detector a run uses, at which scale, and the one line that says why."""

    detector: Detector
    reason: str
    warnings: list[str]
    scale: float = 1.0  # windows are enlarged by this factor to reach the model's GSD

    def record(self) -> dict:
        return {"model": self.detector.name, "reason": self.reason, "warnings": self.warnings,
                "scale": self.scale, "card": self.detector.card.to_meta()}


def shipped_cards() -> list[tuple[Path, str, ModelCard]]:
    """(file, model name, card) of each shipped model, read from the files' headers: no model is built."""
    out = []
    for path in shipped_weights():
        meta = read_meta(path)
        out.append((path, meta.model.name, meta.model_card))
    return out


def choose_detector(spec: str | ModelSpec | Detector | None, domain: InputDomain, native_scale: bool = False) -> Choice:
    """The detector for an input: the one named, else the shipped model whose card covers the input, else the
    best label-free method; with the scale factor that brings windows to the model's GSD."""
    gsd_text = ("GSD unknown (no georeference; pass --gsd)" if domain.gsd is None
                else f"GSD {domain.gsd:.3g} m ({'from --gsd' if domain.gsd_source == '--gsd' else 'from the raster'})")
    if spec is not None:
        det = spec if isinstance(spec, Detector) else load_detector(spec)
        off = mismatches(det.card, domain)
        warns = [f"model {det.name} is outside its training domain: {'; '.join(off)}"] if off else []
        if domain.sensors and not det.model.cross_sensor:
            warns.append(f"the dates look like images from two sensors ({domain.sensors}): {det.name} compares "
                         f"their values and may flag much of the scene; --model {CROSS_SENSOR_DEFAULT} compares "
                         "each date only with itself")
        reason = f"{det.name}: named with --model; input {domain.band_count} bands, {gsd_text}"
        return Choice(det, reason, warns, 1.0 if native_scale else scale_factor(det.card, domain.gsd))
    if domain.sensors:
        reason = (f"{CROSS_SENSOR_DEFAULT} (label-free): the dates look like images from two sensors "
                  f"({domain.sensors}), so their values cannot be compared; it compares each date's own patch "
                  f"similarities instead; input {domain.band_count} bands, {gsd_text}")
        return Choice(_from_registry(CROSS_SENSOR_DEFAULT), reason, [], 1.0)
    rejected = []
    for path, name, card in shipped_cards():
        if card.usable_gsd_m is None:
            continue  # shipped for --model, never the default: it did not beat the label-free methods
        off = mismatches(card, domain) + _unknown_scale(card, domain)
        if not off:
            scale = 1.0 if native_scale else scale_factor(card, domain.gsd)
            how = "" if scale == 1.0 else f", windows resampled {scale:.3g}x to its training GSD"
            if domain.gsd is None:
                how += ("; with the GSD unknown it is taken as aerial imagery like its validation pairs: pass --gsd "
                        "to check the scale, or --model cva for street-level photos")
            reason = (f"{path.stem} ({name}, {card.change}): its domain covers this input "
                      f"({domain.band_count} bands {domain.layout or ''}, {gsd_text}{how})")
            return Choice(_from_checkpoint(path, path.stem), reason, [], scale)
        rejected.append(f"{path.stem}: {'; '.join(off)}")
    kind = "rgb" if domain.layout == "rgb" else "multispectral"
    name = LABEL_FREE_DEFAULT[kind]
    if rejected:
        why = f"no trained model covers this input ({'; '.join(rejected)})"
    else:
        why = f"the best F1 on held-out {kind} sources, where no shipped trained model beat it"
    reason = f"{name} (label-free): {why}; input {domain.band_count} bands, {gsd_text}"
    return Choice(_from_registry(name), reason, [], 1.0)


def _unknown_scale(card: ModelCard, domain: InputDomain) -> list[str]:
    """Why an input whose scale is not known lies outside a default's domain: a panorama is street-level, and
    an unknown GSD is trusted only where the card says the model was validated on such pairs."""
    if domain.panorama:
        return ["a street-level panorama (--wrap)"]
    if domain.gsd is None and not card.usable_without_gsd:
        return ["GSD unknown (pass --gsd)"]
    return []


def load_detector(spec: str | ModelSpec | None, band_count: int | None = None) -> Detector:
    """`spec` is a registry name, shipped weights or a checkpoint path (ModelSpec); None picks the default for
    `band_count` bands of unknown GSD and band names (evaluation on arrays; `detect` knows more and calls
    choose_detector)."""
    if spec is None:
        domain = InputDomain(band_count or 3, [f"band {i + 1}" for i in range(band_count or 3)],
                             [], "float32", None, "unknown")
        return choose_detector(None, domain).detector
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    if spec.kind == "shipped":  # known by its shipped name (sentinel2), not its architecture
        return _from_checkpoint(spec.path, spec.text)
    return _from_checkpoint(spec.path) if spec.path is not None else _from_registry(spec.text)


def checkpoint_path(spec: str) -> Path | None:
    """The checkpoint file `spec` names (a path, or a shipped model's name), or None for a registry name."""
    return ModelSpec.parse(spec).path


def _from_registry(name: str) -> Detector:
    entry = model_entry(name)
    model = create_model(name)
    if any(p.requires_grad for p in model.parameters()):
        raise InputError(f"model {name!r} must be trained first: pass a checkpoint from `cdtool train` "
                         "(the classical detector 'cva' needs none)")
    return Detector(entry.name, as_dense(model.eval(), entry.info.get("output", "dense")),
                    dict(model.default_normalization), model.default_threshold,
                    card=ModelCard(data="none: label-free"))


def _from_checkpoint(path: Path, known_as: str | None = None) -> Detector:
    """The detector of a checkpoint file, named `known_as` (a shipped model's name) or by its architecture."""
    states, meta = load_checkpoint(path)  # the metadata checked: model, normalisation, threshold, card
    name, args, card = meta.model.name, dict(meta.model.args), meta.model_card
    _check_shapes(path, name, args, states.get("model", {}))
    _check_card_bands(path, name, args, card)
    check_finite(path, states.get("model", {}))
    model = create_model(name, **args)
    try:
        model.load_state_dict(states.get("model", {}))
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit model {name!r} ({str(exc).splitlines()[0]})") from None
    output = model_entry(name).info.get("output", "dense")  # stand-ins registered bare are dense
    return Detector(known_as or name, as_dense(model.eval(), output), dict(meta.normalization), meta.threshold,
                    meta.bands, meta, card)


def _check_shapes(path: Path, name: str, args: dict, weights: dict) -> None:
    """Build the model on the meta device (no memory) and compare its tensors with the file's, so metadata
    that asks for a huge model fails here instead of allocating it."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in create_model(name, **args).state_dict().items()}
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: model arguments do not fit {name!r} ({str(exc).splitlines()[0]})") from None
    except InputError as exc:  # e.g. a model name that is not registered
        raise InputError(f"{path}: {exc}") from None
    if expected and not weights:
        raise InputError(f"{path}: checkpoint holds no 'model' weights")
    for key, shape in expected.items():
        got = tuple(weights[key].shape) if key in weights else None
        if got != shape:
            raise InputError(f"{path}: weights do not fit model {name!r} ({key}: file {got}, model {shape})")


def _check_card_bands(path: Path, name: str, args: dict, card: ModelCard) -> None:
    """Refuse a card whose band count the weights cannot take (they already fit the model's arguments): the
    band check against the input trusts the card, so a card of 3 bands over weights for 13 channels let a
    3-band input through to fail inside the first convolution. The model is built on the meta device (no
    memory) with the card's band count as `in_channels` and its tensor shapes compared with the weights'."""
    if card.band_count is None or "in_channels" not in inspect.signature(model_entry(name).obj).parameters:
        return
    try:
        with torch.device("meta"):
            carded = create_model(name, **{**args, "in_channels": card.band_count}).state_dict()
            weights = create_model(name, **args).state_dict()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: its card's {card.band_count} bands do not fit {name!r} "
                         f"({str(exc).splitlines()[0]})") from None
    for key, tensor in weights.items():
        if key in carded and carded[key].shape != tensor.shape:
            took = f"{tensor.shape[1]} input channels" if tensor.dim() >= 2 else f"shape {tuple(tensor.shape)}"
            would = f"{carded[key].shape[1]}" if tensor.dim() >= 2 else f"{tuple(carded[key].shape)}"
            raise InputError(f"{path}: its card says {card.band_count} bands but its weights are for another "
                             f"band count ({key} takes {took}, where the card's {card.band_count} bands need {would})")


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise OptionError("device", f"must be cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("device", f"{device} asked for, but no CUDA GPU is available here")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise OptionError("device", f"{device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(device)
