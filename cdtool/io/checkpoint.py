"""Checkpoints that load without executing code: safetensors tensors + JSON metadata.

One file holds several named state dicts (``model``, and e.g. ``teacher``, ``discriminator``) as tensors
named ``<state>.<param>``, and a ``cdtool`` metadata entry with the model name and arguments, the input
normalisation, the detection threshold, the resolved recipe and where training stood (phase, epoch), read
back as a checked `CheckpointMeta` (cdtool.io.checkpoint_meta). `cdtool detect --model run/best.safetensors`
needs nothing else.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cdtool.errors import InputError, write_failure
from cdtool.io.checkpoint_meta import CheckpointMeta, parse_meta
from cdtool.io.outputs import replaced_when_done

META_KEY = "cdtool"


def save_checkpoint(path: str | os.PathLike, states: dict[str, dict[str, torch.Tensor]],
                    meta: CheckpointMeta | dict) -> Path:
    """Write atomically (temporary name, then rename). A dict is written as given, unchecked (tests craft
    hostile files with it); readers check it when they load the file."""
    if isinstance(meta, CheckpointMeta):
        meta = meta.to_json()
    flat = {}
    for state_name, sd in states.items():
        for k, v in sd.items():
            if isinstance(v, torch.Tensor):
                flat[f"{state_name}.{k}"] = v.detach().cpu().contiguous()
    path = Path(path)
    with replaced_when_done(path) as tmp:
        try:
            save_file(flat, str(tmp), metadata={META_KEY: json.dumps(meta)})
        except SafetensorError as exc:  # its I/O errors (a full disk) are not OSErrors
            raise write_failure(path, exc) from None
    return path


# Levels of nesting the metadata may have (a resolved recipe needs under 10): json.loads recurses once per
# level, so a header nested 100,000 deep ended in RecursionError, and every reader of the tree after it would too.
MAX_META_DEPTH = 64
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def nesting_exceeds(text: str, limit: int) -> bool:
    """Whether JSON text nests arrays and objects deeper than `limit` (brackets inside strings do not count);
    one pass that stops at the first level too deep."""
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        elif bracket in "]}":
            depth -= 1
    return False


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Only the metadata (from the file's header; no tensor is read), checked, e.g. to read a model's card."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable cdtool checkpoint ({exc})") from None
    if raw is None:
        raise InputError(f"{path}: safetensors file without cdtool metadata (model name, normalisation)")
    if nesting_exceeds(raw, MAX_META_DEPTH):
        raise InputError(f"{path}: checkpoint metadata is nested more than {MAX_META_DEPTH} levels deep")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise InputError(f"{path}: checkpoint metadata is not valid JSON") from None
    return parse_meta(meta, path)


def check_finite(path: Path, state: dict[str, torch.Tensor], name: str = "model") -> None:
    """Refuse weights holding NaN or ±Inf: one NaN anywhere (a diverged run, a crafted file) turns every score
    it reaches into NaN, which would be written as if it were a map."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"{path}: weights are not finite ({bad} of {tensor.numel()} values of {name}.{key} "
                             "are NaN or Inf)")


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], CheckpointMeta]:
    """Read back (states, checked metadata); never unpickles, and reads no tensor when the metadata is refused."""
    path = Path(path)
    meta = read_meta(path)
    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable cdtool checkpoint ({exc})") from None
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        state_name, _, param = key.partition(".")
        states.setdefault(state_name, {})[param] = tensor
    return states, meta
