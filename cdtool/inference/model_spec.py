"""What `--model` names, told apart by one rule, so a file in the working folder never shadows a model.

A spec is a checkpoint *file* when it is given as a path object, contains a path separator (`./cva`,
`runs/best.safetensors`) or ends in `.safetensors` or `.pt`; otherwise it is a *shipped* weights name
(`vhr_rgb`: cdtool/weights/vhr_rgb.safetensors) or a *registered* model name (`cva`), shipped names first
(the two sets are kept apart: tests/test_model_spec.py). A file called `cva` in the working folder is
therefore never read for `--model cva`; `--model ./cva` reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cdtool.errors import InputError
from cdtool.models.registry import MODELS

SHIPPED_WEIGHTS = "*.safetensors"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt")


def shipped_weights() -> list[Path]:
    return sorted(Path(str(resources.files("cdtool") / "weights")).glob(SHIPPED_WEIGHTS))


def names_a_file(text: str) -> bool:
    """The rule: a separator or a checkpoint suffix makes the text a path."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(s in text for s in separators) or Path(text).suffix.lower() in CHECKPOINT_SUFFIXES


@dataclass(frozen=True)
class ModelSpec:
    """A resolved `--model`: `kind` is "registered", "shipped" or "file"; `path` is the checkpoint a shipped
    or file spec reads (None for a registered model)."""

    kind: str
    text: str
    path: Path | None = None

    @classmethod
    def parse(cls, spec: str | os.PathLike) -> "ModelSpec":
        """The spec `spec` names, or InputError: a path that is no file, or a name nothing is registered under."""
        text = os.fspath(spec)
        if isinstance(spec, os.PathLike) or names_a_file(text):
            path = Path(text)
            if not path.is_file():
                raise InputError(f"{path}: no such checkpoint file")
            return cls("file", text, path)
        shipped = {p.stem: p for p in shipped_weights()}
        if text in shipped:
            return cls("shipped", text, shipped[text])
        if text in MODELS:
            return cls("registered", text)
        here = f"; to read the file {text} here, pass ./{text}" if Path(text).exists() else ""
        raise InputError(f"unknown model {text!r}; registered: {', '.join(MODELS.names())}; shipped: "
                         f"{', '.join(shipped)}{here}")

    def files(self) -> list[Path]:
        """The files the model is read from: inputs of a run, like the images (the resume fingerprint)."""
        return [self.path] if self.path is not None else []
