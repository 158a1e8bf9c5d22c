"""A set of output files written under temporary names and renamed together when complete, so a
failed or interrupted run leaves nothing half-written and nothing the user had is overwritten silently."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from cdtool.errors import InputError


class OutputSet:
    def __init__(self, folder: str | os.PathLike, names: list[str], overwrite: bool = False):
        self.folder = Path(folder)
        existing = [n for n in names if (self.folder / n).exists()]
        if existing and not overwrite:
            raise InputError(f"{self.folder}: already holds {', '.join(existing)} (use --overwrite to replace)")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".cdtool-probe-{uuid.uuid4().hex[:8]}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise InputError(f"{self.folder}: output folder is not writable ({exc.strerror or exc})") from None
        tag = uuid.uuid4().hex[:8]
        self.names = names
        self.temp = {n: self.folder / f".{Path(n).stem}.partial-{tag}{Path(n).suffix}" for n in names}
        self.done = False

    def path(self, name: str) -> Path:
        """Temporary path to write `name` to; becomes the final name on commit."""
        return self.temp[name]

    def final(self, name: str) -> Path:
        return self.folder / name

    def commit(self) -> dict[str, Path]:
        for n in self.names:
            tmp = self.temp[n]
            if tmp.is_dir():
                if self.final(n).exists():
                    shutil.rmtree(self.final(n))
                tmp.rename(self.final(n))
            elif tmp.exists():
                os.replace(tmp, self.final(n))
            for side in tmp.parent.glob(tmp.name + ".*"):  # e.g. GDAL's .aux.xml sidecars
                os.replace(side, self.final(n).with_name(self.final(n).name + side.name[len(tmp.name):]))
        self.done = True
        return {n: self.final(n) for n in self.names if self.final(n).exists()}

    def abort(self) -> None:
        for tmp in self.temp.values():
            for p in [tmp, *tmp.parent.glob(tmp.name + ".*")]:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.done:
            self.abort()
