"""Probes tried as a new user would: a bad file, a bad option, a hostile checkpoint, a busy or unwritable output
folder, for every command. Each must end in exactly one line on stderr that names the file or option and the
problem, exit 2 for bad input or usage (1 for a failure), no traceback, and the files in the folder exactly as
they were before the run (nothing written, nothing of the user's changed)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from affine import Affine
from PIL import Image
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.io.checkpoint import save_checkpoint
from cdtool.models.registry import create_model
from engine_fixtures import make_pair_folder, tiny_recipe
from tests.conftest import write_tif

pytestmark = pytest.mark.timeout(60)
runner = CliRunner()


@dataclass
class Expect:
    """The command line of a probe, the words its one error line must hold, and its exit code."""

    args: list
    words: tuple = ()
    code: int = 2


class World:
    """Small inputs in a temporary folder, made on demand by the probe that needs them."""

    def __init__(self, root: Path, checkpoint: bytes, trained_run: Path):
        self.root = root
        self.checkpoint = checkpoint
        self.trained_run = trained_run
        self.rng = np.random.default_rng(0)

    def p(self, name: str) -> Path:
        return self.root / name

    def tif(self, name: str = "before.tif", bands: int = 3, size: int = 64, **kw) -> Path:
        data = self.rng.integers(0, 255, (bands, size, size)).astype(np.uint8)
        return write_tif(self.p(name), data, **kw)

    def pair(self) -> tuple[Path, Path]:
        return self.tif("before.tif"), self.tif("after.tif")

    def mask(self, name: str = "mask.tif", size: int = 64) -> Path:
        self.p(name).parent.mkdir(parents=True, exist_ok=True)
        return write_tif(self.p(name), (self.rng.random((size, size)) > 0.7).astype(np.uint8))

    def png(self, name: str, size: int) -> Path:
        Image.fromarray(self.rng.integers(0, 255, (size, size, 3)).astype(np.uint8)).save(self.p(name))
        return self.p(name)

    def file(self, name: str, data: bytes | str = b"") -> Path:
        path = self.p(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def folder(self, name: str = "pairs") -> Path:
        return make_pair_folder(self.p(name), n=4, size=32)

    def recipe(self, name: str = "r.yaml", text: str | None = None, **over) -> Path:
        tree = tiny_recipe(self.folder(), **over)
        return self.file(name, text if text is not None else yaml.safe_dump(tree))

    def truncated(self, name: str = "cut.tif", cog: bool = False) -> Path:
        """A tiled (or COG) GeoTIFF cut in the middle of its pixel data: the header reads, the blocks do not."""
        import rasterio

        src = self.p(f".src-{name}")
        data = self.rng.integers(0, 255, (3, 512, 512)).astype(np.uint8)
        profile = dict(driver="COG" if cog else "GTiff", width=512, height=512, count=3, dtype="uint8",
                       crs="EPSG:32632", transform=Affine(10, 0, 6e5, 0, -10, 5e6))
        if not cog:
            profile |= dict(tiled=True, blockxsize=256, blockysize=256)
        if cog:
            write_tif(src, data)
            from rasterio.shutil import copy

            copy(src, self.p(name + ".tmp"), driver="COG")
            raw = self.p(name + ".tmp").read_bytes()
            self.p(name + ".tmp").unlink()
        else:
            with rasterio.open(src, "w", **profile) as ds:
                ds.write(data)
            raw = src.read_bytes()
        src.unlink()
        return self.file(name, raw[: len(raw) * 2 // 3])

    def lock(self, folder: Path) -> Path:
        """The output folder held by another live cdtool run (our parent process stands in for it)."""
        folder.mkdir(parents=True, exist_ok=True)
        return self.file(str((folder / ".cdtool.lock").relative_to(self.root)), f"{os.getppid()}\n")

    def ckpt(self, name: str = "m.safetensors", meta=None, header=None, tensors=None) -> Path:
        """The small valid checkpoint with its metadata, header or tensor bytes replaced."""
        raw = self.checkpoint
        n = struct.unpack("<Q", raw[:8])[0]
        head = json.loads(raw[8:8 + n])
        body = raw[8 + n:]
        if meta is not None:
            old = json.loads(head["__metadata__"]["cdtool"])
            new = meta(old) if callable(meta) else meta
            head["__metadata__"]["cdtool"] = new if isinstance(new, str) else json.dumps(new)
        if header is not None:
            head = header(head)
        if tensors is not None:
            body = tensors(body)
        text = json.dumps(head).encode()
        text += b" " * (-len(text) % 8)
        return self.file(name, struct.pack("<Q", len(text)) + text + body)

    def run_copy(self, name: str = "run") -> Path:
        """A copy of a finished one-epoch training run to tamper with."""
        import shutil

        return Path(shutil.copytree(self.trained_run, self.p(name)))


def model_args(**args) -> Callable[[dict], dict]:
    def edit(meta: dict) -> dict:
        meta["model"]["args"] = {**meta["model"]["args"], **args}
        return meta

    return edit


def set_meta(key: str, value) -> Callable[[dict], dict]:
    def edit(meta: dict) -> dict:
        meta[key] = value
        return meta

    return edit


# -- the probes: name -> World -> Expect ---------------------------------------------------------------------

PROBES: dict[str, Callable[[World], Expect]] = {}


def probe(name: str):
    def register(fn: Callable[[World], Expect]) -> Callable[[World], Expect]:
        assert name not in PROBES, name
        PROBES[name] = fn
        return fn

    return register


def detect_args(w: World, *extra, before=None, after=None, out=None) -> list:
    if before is None or after is None:
        b, a = w.pair()
        before, after = before or b, after or a
    return ["detect", before, after, "-o", out or w.p("out"), "--model", "cva", "-q", *extra]


# detect: a bad option value (option, value, words of the message)
DETECT_OPTIONS = [
    ("--tile", "0", "--tile"), ("--tile", "-64", "--tile"), ("--tile", "abc", "--tile"),
    ("--overlap", "-1", "--overlap"), ("--threshold", "7", "--threshold"), ("--threshold", "nan", "--threshold"),
    ("--threshold", "bogus", "--threshold"), ("--threshold", "-0.1", "--threshold"), ("--bands", "0", "band(s) [0]"),
    ("--bands", "9", "band(s) [9]"), ("--bands", "a,b", "--bands"), ("--batch-size", "0", "--batch-size"),
    ("--batch-size", "-2", "--batch-size"), ("--blend", "bogus", "--blend"), ("--min-pixels", "-1", "--min-pixels"),
    ("--min-area", "-5", "--min-area"), ("--min-area", "nan", "--min-area"), ("--gsd", "0", "--gsd"),
    ("--gsd", "-1", "--gsd"), ("--gsd", "nan", "--gsd"), ("--gsd", "inf", "--gsd"), ("--workers", "-1", "--workers"),
    ("--workers", "0", "--workers"),
    ("--clean", "-1", "--clean"), ("--format", "shp", "--format"), ("--device", "tpu", "--device"),
    ("--model", "no_such_model", "no_such_model"),
]
for _opt, _value, _word in DETECT_OPTIONS:
    probe(f"detect {_opt} {_value}")(
        lambda w, o=_opt, v=_value, word=_word: Expect(detect_args(w, o, v), (word,)))


@probe("detect BEFORE missing")
def _(w):
    return Expect(detect_args(w, before=w.p("nope.tif"), after=w.tif("after.tif")), ("nope.tif", "no such"))


@probe("detect AFTER missing")
def _(w):
    return Expect(detect_args(w, before=w.tif(), after=w.p("gone.tif")), ("gone.tif", "no such"))


@probe("detect BEFORE an empty folder")
def _(w):
    (w.p("empty")).mkdir()
    return Expect(detect_args(w, before=w.p("empty"), after=w.tif("after.tif")), ("empty",))


@probe("detect BEFORE an empty file")
def _(w):
    return Expect(detect_args(w, before=w.file("zero.tif"), after=w.tif("after.tif")), ("zero.tif",))


@probe("detect AFTER text, not a raster")
def _(w):
    return Expect(detect_args(w, before=w.tif(), after=w.file("junk.tif", "not a tiff")), ("junk.tif", "cannot read"))


@probe("detect AFTER a dangling link")
def _(w):
    os.symlink(w.p("absent.tif"), w.p("link.tif"))
    return Expect(detect_args(w, before=w.tif(), after=w.p("link.tif")), ("link.tif",))


@probe("detect truncated GeoTIFF")
def _(w):
    cut = w.truncated()
    return Expect(detect_args(w, before=cut, after=cut), ("cut.tif",))


@probe("detect truncated COG")
def _(w):
    cut = w.truncated("cut_cog.tif", cog=True)
    return Expect(detect_args(w, before=cut, after=cut), ("cut_cog.tif",))


@probe("detect PNG pair of other sizes")
def _(w):
    return Expect(detect_args(w, before=w.png("a.png", 64), after=w.png("b.png", 48)), ("b.png",))


@probe("detect band counts differ")
def _(w):
    return Expect(detect_args(w, before=w.tif("three.tif"), after=w.tif("two.tif", bands=2)), ("2 bands",))


@probe("detect rasters of other sizes")
def _(w):
    return Expect(detect_args(w, before=w.tif("big.tif", size=64), after=w.tif("small.tif", size=48)), ("small.tif",))


@probe("detect CRS differ")
def _(w):
    return Expect(detect_args(w, before=w.tif(), after=w.tif("other.tif", crs="EPSG:4326",
                                                             transform=Affine(1e-4, 0, 9, 0, -1e-4, 45))),
                  ("CRS",))


@probe("detect --align, grids do not overlap")
def _(w):
    far = w.tif("far.tif", transform=Affine(10, 0, 900000, 0, -10, 5000000))
    return Expect(detect_args(w, "--align", before=w.tif(), after=far), ("overlap",))


@probe("detect nodata-only rasters")
def _(w):
    blank = write_tif(w.p("blank.tif"), np.zeros((3, 64, 64), np.uint8), nodata=0)
    return Expect(detect_args(w, before=blank, after=w.tif("after.tif", nodata=0)), ("blank.tif", "nodata"))


@probe("detect NaN-only float raster")
def _(w):
    nan = write_tif(w.p("nan.tif"), np.full((3, 64, 64), np.nan, np.float32))
    ok = write_tif(w.p("ok.tif"), np.ones((3, 64, 64), np.float32))
    return Expect(detect_args(w, before=nan, after=ok), ("nan.tif",))


@probe("detect named pipe as input")
def _(w):
    os.mkfifo(w.p("pipe.tif"))
    return Expect(detect_args(w, before=w.tif(), after=w.p("pipe.tif")), ("pipe.tif", "not a regular file"))


@probe("detect --out is a file")
def _(w):
    return Expect(detect_args(w, out=w.file("out.txt", "mine")), ("out.txt", "is a file"))


@probe("detect --out below a file")
def _(w):
    return Expect(detect_args(w, out=w.file("plain", "mine") / "sub"), ("plain",))


@probe("detect --out holds outputs, no --overwrite")
def _(w):
    w.file("out/change_prob.tif", "the user's")
    return Expect(detect_args(w, out=w.p("out")), ("change_prob.tif", "--overwrite"))


@probe("detect --out locked by another run")
def _(w):
    w.lock(w.p("out"))
    return Expect(detect_args(w), ("another cdtool run",))


@probe("detect --flow with a model that has no flow")
def _(w):
    return Expect(detect_args(w, "--flow"), ("--flow",))


@probe("detect corrupt block in the middle")
def _(w):
    import rasterio

    data = w.rng.integers(0, 255, (3, 512, 512)).astype(np.uint8)
    with rasterio.open(w.p("bad.tif"), "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8",
                       tiled=True, blockxsize=256, blockysize=256, compress="deflate", crs="EPSG:32632",
                       transform=Affine(10, 0, 6e5, 0, -10, 5e6)) as ds:
        ds.write(data)
    raw = bytearray(w.p("bad.tif").read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 2000] = b"\x55" * 2000
    w.p("bad.tif").write_bytes(bytes(raw))
    return Expect(detect_args(w, before=w.p("bad.tif"), after=w.p("bad.tif")), ("bad.tif", "rows"))


@probe("detect band folder of mismatched sizes")
def _(w):
    (w.p("bands")).mkdir()
    w.tif("bands/B02.tif", bands=1, size=64)
    w.tif("bands/B03.tif", bands=1, size=48)
    return Expect(detect_args(w, before=w.p("bands"), after=w.tif("after.tif")), ("bands",))


def band_folder(w: World, name: str = "bands") -> Path:
    """A folder of three single-band 64x64 files (B02, B03, B04)."""
    w.p(name).mkdir(parents=True, exist_ok=True)
    for band in ("B02", "B03", "B04"):
        w.tif(f"{name}/{band}.tif", bands=1)
    return w.p(name)


def earlier_outputs(w: World, out: str = "out") -> Path:
    """An output folder holding a finished run's rasters (valid GeoTIFFs a later run may read) and polygons."""
    w.p(out).mkdir(parents=True, exist_ok=True)
    w.tif(f"{out}/change_prob.tif")
    w.tif(f"{out}/change_mask.tif")
    w.file(f"{out}/changes.gpkg", "the earlier polygons")
    return w.p(out)


@probe("detect --overwrite onto its own inputs")
def _(w):
    out = earlier_outputs(w)
    return Expect(detect_args(w, "--overwrite", before=out / "change_prob.tif", after=out / "change_mask.tif",
                              out=out), ("change_prob.tif", "an input of this run"))


@probe("detect onto its own inputs, no --overwrite")
def _(w):
    out = earlier_outputs(w)
    return Expect(detect_args(w, before=out / "change_mask.tif", after=w.tif("after.tif"), out=out),
                  ("change_mask.tif", "an input of this run"))


@probe("detect --overwrite onto a VRT's source")
def _(w):
    from cdtool.io.stack import write_stack

    out = earlier_outputs(w)
    vrt = write_stack(w.p("before.vrt"), [out / "change_prob.tif"])
    return Expect(detect_args(w, "--overwrite", before=vrt, after=w.tif("after.tif", bands=1), out=out),
                  ("change_prob.tif", "an input of this run"))


@probe("detect --overwrite onto a band-folder member (a link)")
def _(w):
    out = earlier_outputs(w)
    bands = band_folder(w)
    (bands / "B05.tif").symlink_to(w.tif("out/change_mask.tif", bands=1))
    later = band_folder(w, "later")
    w.tif("later/B05.tif", bands=1)
    return Expect(detect_args(w, "--overwrite", before=bands, after=later, out=out),
                  ("change_mask.tif", "an input of this run"))


@probe("detect --overwrite, detect.json a non-empty folder")
def _(w):
    out = earlier_outputs(w)
    w.file("out/detect.json/notes.txt", "the user's")
    return Expect(detect_args(w, "--overwrite", out=out), ("detect.json", "is a folder"))


@probe("detect --out is BEFORE's band folder")
def _(w):
    return Expect(detect_args(w, before=band_folder(w), after=band_folder(w, "later"), out=w.p("bands")),
                  ("bands", "input folder"))


@probe("detect --out inside BEFORE's band folder")
def _(w):
    return Expect(detect_args(w, before=band_folder(w), after=band_folder(w, "later"), out=w.p("bands/out")),
                  ("bands/out", "inside the input folder"))


@probe("detect --out a link to AFTER's band folder")
def _(w):
    w.p("link").symlink_to(band_folder(w, "later"))
    return Expect(detect_args(w, before=band_folder(w), after=w.p("later"), out=w.p("link")),
                  ("link", "input folder", "later"))


@probe("detect --out with a newline in its name")
def _(w):
    return Expect(detect_args(w, out=w.p("out\nmore")), ("GeoPackage", "--out"))


@probe("detect missing AFTER argument")
def _(w):
    return Expect(["detect", w.tif()], ("give BEFORE and AFTER",))


@probe("detect unknown option")
def _(w):
    b, a = w.pair()
    return Expect(["detect", b, a, "--speed", "11"], ("--speed",))


@probe("detect one argument too many")
def _(w):
    b, a = w.pair()
    return Expect(["detect", b, a, a], ("after.tif",))


# detect --model: crafted and hostile checkpoints
@probe("detect --model missing checkpoint")
def _(w):
    return Expect(detect_args(w)[:-3] + ["--model", w.p("absent.safetensors")], ("absent.safetensors",))


def _model(w: World, path: Path) -> list:
    args = detect_args(w)
    args[args.index("--model") + 1] = path
    return args


class Boom:
    """A pickle payload: unpickling it would create a file (it must never be unpickled)."""

    def __reduce__(self):
        return (Path.touch, (Path("/tmp/cdtool-probe-pwned"),))


@probe("detect --model a pickle .pt")
def _(w):
    path = w.file("evil.pt", pickle.dumps(Boom()))
    return Expect(_model(w, path), ("evil.pt",))


@probe("detect --model a pickle named .safetensors")
def _(w):
    path = w.file("evil.safetensors", pickle.dumps(Boom()))
    return Expect(_model(w, path), ("evil.safetensors",))


@probe("detect --model safetensors without metadata")
def _(w):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(w.p("bare.safetensors")))
    return Expect(_model(w, w.p("bare.safetensors")), ("bare.safetensors", "metadata"))


CHECKPOINT_MUTATIONS = {
    "metadata invalid JSON": dict(meta="{not json"),
    "metadata a list": dict(meta=[1, 2]),
    "metadata width 200000": dict(meta=model_args(width=200000)),
    "metadata width 12000": dict(meta=model_args(width=12000)),
    "metadata negative width": dict(meta=model_args(width=-4)),
    "metadata unknown keyword": dict(meta=model_args(colour="red")),
    "metadata args a string": dict(meta=lambda m: {**m, "model": {**m["model"], "args": "width=4"}}),
    "metadata model name unknown": dict(meta=lambda m: {**m, "model": {**m["model"], "name": "skynet"}}),
    "metadata without model": dict(meta=lambda m: {k: v for k, v in m.items() if k != "model"}),
    "metadata threshold a word": dict(meta=set_meta("threshold", "high")),
    "metadata threshold 7": dict(meta=set_meta("threshold", 7)),
    "metadata in_channels 100000": dict(meta=model_args(in_channels=100000)),
    "metadata normalization a number": dict(meta=set_meta("normalization", 3)),
    "tensor shapes of another width": dict(meta=model_args(width=8)),
    "tensor bytes truncated": dict(tensors=lambda body: body[: len(body) // 2]),
    "tensor offsets beyond the file": dict(header=lambda h: {k: v if k == "__metadata__" else
                                                              {**v, "data_offsets": [0, 10**9]} for k, v in h.items()}),
    "header a huge shape": dict(header=lambda h: {**h, **{k: {**v, "shape": [10**6, 10**6]}
                                                          for k, v in h.items() if k != "__metadata__"}}),
}
for _kind, _edit in CHECKPOINT_MUTATIONS.items():
    probe(f"detect --model checkpoint {_kind}")(
        lambda w, e=_edit: Expect(_model(w, w.ckpt("crafted.safetensors", **e)), ("crafted.safetensors",)))


@probe("detect --model header length field overflows")
def _(w):
    path = w.file("huge.safetensors", struct.pack("<Q", 2**62) + b"{}" + b" " * 6)
    return Expect(_model(w, path), ("huge.safetensors",))


@probe("info a pickle named .safetensors")
def _(w):
    return Expect(["info", w.file("evil.safetensors", pickle.dumps(Boom()))], ("evil.safetensors",))


@probe("info metadata invalid JSON")
def _(w):
    return Expect(["info", w.ckpt("crafted.safetensors", meta="{oops")], ("crafted.safetensors", "JSON"))


@probe("info metadata width 200000")
def _(w):
    return Expect(["info", w.ckpt("crafted.safetensors", meta=model_args(width=200000))], ("crafted.safetensors",))


@probe("info missing file")
def _(w):
    return Expect(["info", w.p("absent.safetensors")], ("absent.safetensors",))


@probe("info unknown model name")
def _(w):
    return Expect(["info", "no_such_model"], ("no_such_model",))


@probe("info a folder")
def _(w):
    w.p("folder.safetensors").mkdir()
    return Expect(["info", w.p("folder.safetensors")], ("folder.safetensors",))


@probe("info empty file")
def _(w):
    return Expect(["info", w.file("empty.safetensors")], ("empty.safetensors",))


@probe("models --recipes missing folder")
def _(w):
    return Expect(["models", "--recipes", w.p("nowhere")], ("nowhere",))


@probe("models --recipes is a file")
def _(w):
    return Expect(["models", "--recipes", w.file("recipes.yaml", "a: 1")], ("recipes.yaml",))


@probe("unknown command")
def _(w):
    return Expect(["dettect"], ("dettect",))


@probe("unknown global option")
def _(w):
    return Expect(["--verbose", "models"], ("--verbose",))


# tile
def tile_args(w: World, *extra, out=None) -> list:
    b, a = w.pair()
    return ["tile", b, a, "--mask", w.mask(), "-o", out or w.p("tiles"), "--size", "32", "-q", *extra]


TILE_OPTIONS = [
    ("--size", "0", "--size"), ("--size", "-32", "--size"), ("--stride", "0", "--stride"),
    ("--stride", "-8", "--stride"), ("--max-nodata", "2", "--max-nodata"), ("--max-nodata", "-0.1", "--max-nodata"),
    ("--max-nodata", "nan", "--max-nodata"), ("--split", "0.5,0.5", "--split"), ("--split", "a,b,c", "--split"),
    ("--split", "-1,1,1", "--split"), ("--split", "0,0,0", "--split"), ("--split-by", "bogus", "--split-by"),
    ("--block", "-1", "--block"), ("--bands", "5", "band(s) [5]"), ("--bands", "0", "band(s) [0]"),
    ("--size", "1000", "no samples"),
]
for _opt, _value, _word in TILE_OPTIONS:
    probe(f"tile {_opt} {_value}")(lambda w, o=_opt, v=_value, word=_word: Expect(tile_args(w, o, v), (word,)))


@probe("tile BEFORE missing")
def _(w):
    return Expect(["tile", w.p("nope.tif"), w.tif("after.tif"), "-o", w.p("tiles")], ("nope.tif",))


@probe("tile --mask missing")
def _(w):
    b, a = w.pair()
    return Expect(["tile", b, a, "--mask", w.p("nomask.tif"), "-o", w.p("tiles")], ("nomask.tif",))


@probe("tile --mask of another size")
def _(w):
    b, a = w.pair()
    return Expect(["tile", b, a, "--mask", w.mask("small_mask.tif", size=40), "-o", w.p("tiles")],
                  ("small_mask.tif",))


@probe("tile band counts differ")
def _(w):
    return Expect(["tile", w.tif("b3.tif"), w.tif("b2.tif", bands=2), "--mask", w.mask(), "-o", w.p("tiles")],
                  ("2 bands",))


@probe("tile BEFORE an empty file")
def _(w):
    return Expect(["tile", w.file("zero.tif"), w.tif("after.tif"), "-o", w.p("tiles")], ("zero.tif",))


@probe("tile truncated GeoTIFF")
def _(w):
    cut = w.truncated()
    return Expect(["tile", cut, cut, "-o", w.p("tiles"), "--size", "128"], ("cut.tif",))


@probe("tile folder without A/ B/")
def _(w):
    w.file("loose/readme.txt", "no pairs here")
    return Expect(["tile", w.p("loose"), "-o", w.p("tiles")], ("loose",))


@probe("tile list file naming missing images")
def _(w):
    lst = w.file("pairs.txt", f"{w.p('x.tif')} {w.p('y.tif')}\n")
    return Expect(["tile", lst, "-o", w.p("tiles")], ("x.tif",))


@probe("tile empty list file")
def _(w):
    return Expect(["tile", w.file("pairs.txt"), "-o", w.p("tiles")], ("pairs.txt",))


@probe("tile --out is a file")
def _(w):
    return Expect(tile_args(w, out=w.file("tiles.txt", "mine")), ("tiles.txt",))


@probe("tile --out below a file")
def _(w):
    return Expect(tile_args(w, out=w.file("plain", "mine") / "tiles"), ("plain",))


@probe("tile --out locked by another run")
def _(w):
    w.lock(w.p("tiles"))
    return Expect(tile_args(w), ("another cdtool run",))


@probe("tile nodata-only rasters")
def _(w):
    blank = write_tif(w.p("blank.tif"), np.zeros((3, 64, 64), np.uint8), nodata=0)
    return Expect(["tile", blank, blank, "-o", w.p("tiles"), "--size", "32"], ("no samples",))


@probe("tile named pipe as input")
def _(w):
    os.mkfifo(w.p("pipe.tif"))
    return Expect(["tile", w.tif(), w.p("pipe.tif"), "-o", w.p("tiles")], ("pipe.tif",))


# patches
def pcd_args(w: World, *extra, out=None) -> list:
    b, a = w.pair()
    return ["patches", "pcd", b, a, "--mask", w.mask(), "-o", out or w.p("patches"), "--patch", "16", "--centre", "4",
            "--stride", "8", "-q", *extra]


PATCH_OPTIONS = [
    ("--min-iou", "0.5", "--min-iou"), ("--variant", "R", "--variant"), ("--patch", "0", "patch"), ("--patch", "-16", "patch"),
    ("--centre", "64", "centre"), ("--centre", "0", "centre"), ("--stride", "0", "stride"),
    ("--max-positives", "-1", "--max-positives"), ("--max-positives", "many", "--max-positives"),
    ("--max-negatives", "-3", "--max-negatives"), ("--bands", "7", "band(s) [7]"), ("--split", "1,1", "--split"),
]
for _opt, _value, _word in PATCH_OPTIONS:
    probe(f"patches pcd {_opt} {_value}")(lambda w, o=_opt, v=_value, word=_word: Expect(pcd_args(w, o, v), (word,)))


@probe("patches pcd without a mask")
def _(w):
    b, a = w.pair()
    return Expect(["patches", "pcd", b, a, "-o", w.p("patches")], ("mask",))


@probe("patches pcd three inputs")
def _(w):
    b, a = w.pair()
    return Expect(["patches", "pcd", b, a, a, "--mask", w.mask(), "-o", w.p("patches")], ("after.tif",))


@probe("patches with an unknown protocol")
def _(w):
    b, a = w.pair()
    return Expect(["patches", "bogus", b, a, "-o", w.p("patches")], ("bogus",))


@probe("patches pcd --out is a file")
def _(w):
    return Expect(pcd_args(w, out=w.file("patches.txt", "mine")), ("patches.txt",))


@probe("patches pcd --out locked by another run")
def _(w):
    w.lock(w.p("patches"))
    return Expect(pcd_args(w), ("another cdtool run",))


def vectors(w: World) -> tuple[Path, Path]:
    import geopandas as gpd
    from shapely.geometry import box

    paths = []
    for name, shift in (("b.gpkg", 0), ("a.gpkg", 5)):
        gdf = gpd.GeoDataFrame(geometry=[box(600000 + shift, 4999000, 600020 + shift, 4999020)], crs="EPSG:32632")
        gdf.to_file(w.p(name))
        paths.append(w.p(name))
    return paths[0], paths[1]


FOOTPRINT_OPTIONS = [("--min-iou", "2", "--min-iou"), ("--min-overlap", "-1", "--min-overlap"),
                     ("--resolution", "0", "--resolution"), ("--resolution", "-0.5", "--resolution")]
for _opt, _value, _word in FOOTPRINT_OPTIONS:
    probe(f"patches footprints {_opt} {_value}")(lambda w, o=_opt, v=_value, word=_word: Expect(
        ["patches", "footprints", *vectors(w), "-o", w.p("patches"), "--patch", "8", o, v], (word,)))


@probe("patches footprints every building on a split border")
def _(w):
    return Expect(["patches", "footprints", *vectors(w), "-o", w.p("patches"), "--patch", "8"], ("no samples",))


@probe("patches footprints one layer")
def _(w):
    return Expect(["patches", "footprints", vectors(w)[0], "-o", w.p("patches")], ("footprints",))


@probe("patches footprints a raster as a layer")
def _(w):
    return Expect(["patches", "footprints", w.tif(), vectors(w)[1], "-o", w.p("patches")], ("before.tif",))


@probe("patches footprints a layer missing")
def _(w):
    return Expect(["patches", "footprints", w.p("nope.gpkg"), vectors(w)[1], "-o", w.p("patches")],
                  ("nope.gpkg",))


def mnist_csv(w: World, rows: int = 40) -> Path:
    digits = w.rng.integers(0, 255, (rows, 784))
    labels = np.arange(rows) % 10
    lines = [",".join(map(str, [*d, l])) for d, l in zip(digits, labels)]
    return w.file("mnist.csv", "\n".join(lines) + "\n")


MNIST_OPTIONS = [("--variant", "bogus", "--variant"), ("--pairs", "0", "--pairs"), ("--pairs", "-5", "--pairs"),
                 ("--positive-fraction", "2", "--positive-fraction"),
                 ("--positive-fraction", "nan", "--positive-fraction")]
for _opt, _value, _word in MNIST_OPTIONS:
    probe(f"patches mnist {_opt} {_value}")(lambda w, o=_opt, v=_value, word=_word: Expect(
        ["patches", "mnist", mnist_csv(w), "-o", w.p("patches"), "--variant", "plain", "--pairs", "20", o, v],
        (word,)))


@probe("patches mnist CSV missing")
def _(w):
    return Expect(["patches", "mnist", w.p("mnist.csv"), "-o", w.p("patches")], ("mnist.csv",))


@probe("patches mnist CSV of other columns")
def _(w):
    return Expect(["patches", "mnist", w.file("mnist.csv", "1,2,3\n4,5,6\n"), "-o", w.p("patches")],
                  ("mnist.csv", "785"))


@probe("patches mnist CSV of words")
def _(w):
    return Expect(["patches", "mnist", w.file("mnist.csv", "a,b\nc,d\n"), "-o", w.p("patches")],
                  ("mnist.csv",))


@probe("patches mnist variant B without backgrounds")
def _(w):
    return Expect(["patches", "mnist", mnist_csv(w), "--variant", "B", "--pairs", "20", "-o", w.p("patches")],
                  ("backgrounds",))


@probe("patches synthetic without --objects")
def _(w):
    return Expect(["patches", "synthetic", w.folder(), "-o", w.p("patches")], ("--objects",))


@probe("patches synthetic --objects missing")
def _(w):
    return Expect(["patches", "synthetic", w.folder(), "--objects", w.p("noobj"), "-o", w.p("patches")],
                  ("noobj",))


@probe("patches synthetic --samples 0")
def _(w):
    f = w.folder()
    return Expect(["patches", "synthetic", f / "A", "--objects", f, "--samples", "0", "--size", "16", "-o", w.p("patches")],
                  ("--samples",))


@probe("patches synthetic --size 0")
def _(w):
    f = w.folder()
    return Expect(["patches", "synthetic", f / "A", "--objects", f, "--size", "0", "-o", w.p("patches")],
                  ("--size",))


@probe("patches synthetic --still 1.5")
def _(w):
    f = w.folder()
    return Expect(["patches", "synthetic", f / "A", "--objects", f, "--still", "1.5", "-o", w.p("patches")],
                  ("--still",))


@probe("patches synthetic --max-shift -1")
def _(w):
    f = w.folder()
    return Expect(["patches", "synthetic", f / "A", "--objects", f, "--max-shift", "-1", "-o", w.p("patches")],
                  ("--max-shift",))


@probe("patches synthetic backgrounds folder empty")
def _(w):
    f = w.folder()
    w.p("nobg").mkdir()
    return Expect(["patches", "synthetic", w.p("nobg"), "--objects", f, "-o", w.p("patches")], ("nobg",))


# train
def train_args(w: World, *extra, recipe=None) -> list:
    return ["train", recipe or w.recipe(), "-o", w.p("run"), "-q", *extra]


@probe("train no RECIPE and no --resume")
def _(w):
    return Expect(["train"], ("RECIPE",))


@probe("train recipe missing")
def _(w):
    return Expect(train_args(w, recipe=w.p("absent.yaml")), ("absent.yaml",))


@probe("train recipe a folder")
def _(w):
    w.p("folder.yaml").mkdir()
    return Expect(train_args(w, recipe=w.p("folder.yaml")), ("folder.yaml",))


RECIPE_TEXTS = {
    "empty": "",
    "bad YAML syntax": "name: [unclosed\n",
    "a list": "- 1\n- 2\n",
    "python tag": "name: !!python/object/apply:os.system ['touch /tmp/cdtool-probe-pwned']\n",
    "tabs and colons": "name:\t:\n\t- :\n",
    "binary bytes": "\x00\x01\x02",
}
for _kind, _text in RECIPE_TEXTS.items():
    probe(f"train recipe {_kind}")(lambda w, t=_text: Expect(train_args(w, recipe=w.recipe("bad.yaml", text=t)),
                                                             ("bad.yaml",)))

RECIPE_EDITS = {  # a dotted key set to a bad value, the key the message must name
    "unknown top-level key": ("colour", "red", "colour"),
    "unknown model": ("models.model.name", "skynet", "skynet"),
    "unknown loss": ("losses.change.name", "magic", "magic"),
    "zero epochs": ("schedule.epochs", 0, "epochs"),
    "negative epochs": ("schedule.epochs", -3, "epochs"),
    "negative lr": ("optim.lr", -0.1, "lr"),
    "NaN lr": ("optim.lr", float("nan"), "lr"),
    "unknown optimiser": ("optim.name", "lbfgs", "optim.name"),
    "unknown task": ("task", "dream", "dream"),
    "batch size zero": ("data.train.pairs.batch_size", 0, "batch_size"),
    "missing data root": ("data.args.roots", ["/nonexistent/cdtool/data"], "/nonexistent/cdtool/data"),
    "model arg unknown": ("models.model.args", {"width": 4, "colour": 1}, "colour"),
}
for _kind, (_key, _value, _word) in RECIPE_EDITS.items():
    probe(f"train recipe {_kind}")(lambda w, k=_key, v=_value, word=_word: Expect(
        train_args(w, recipe=w.recipe(**{k: v})), (word,)))

SET_OVERRIDES = {
    "without =": ("schedule.epochs", "schedule.epochs"),
    "unknown key": ("schedule.speed=3", "speed"),
    "bad YAML value": ("optim.lr=[", "optim.lr"),
    "epochs a word": ("schedule.epochs=abc", "epochs"),
    "negative lr": ("optim.lr=-1", "lr"),
    "python tag value": ("seed=!!python/object/apply:os.getpid []", "seed"),
}
for _kind, (_value, _word) in SET_OVERRIDES.items():
    probe(f"train --set {_kind}")(lambda w, v=_value, word=_word: Expect(train_args(w, "--set", v), (word,)))


@probe("train --device tpu")
def _(w):
    return Expect(train_args(w, "--device", "tpu"), ("--device",))


@probe("train --out is a file")
def _(w):
    return Expect(["train", w.recipe(), "-o", w.file("run.txt", "mine"), "-q"], ("run.txt",))


@probe("train --out locked by another run")
def _(w):
    w.lock(w.p("run"))
    return Expect(train_args(w), ("another cdtool run",))


@probe("train model.init missing")
def _(w):
    recipe = w.recipe(**{"models.model.init": str(w.p("absent.safetensors"))})
    return Expect(train_args(w, recipe=recipe), ("absent.safetensors",))


@probe("train model.init a pickle named .safetensors")
def _(w):
    evil = w.file("evil.safetensors", pickle.dumps(Boom()))
    return Expect(train_args(w, recipe=w.recipe(**{"models.model.init": str(evil)})), ("evil.safetensors",))


@probe("train --resume missing folder")
def _(w):
    return Expect(["train", "--resume", w.p("norun")], ("norun",))


@probe("train --resume folder without a run")
def _(w):
    w.file("emptyrun/notes.txt", "mine")
    return Expect(["train", "--resume", w.p("emptyrun")], ("emptyrun",))


@probe("train --resume pickle state")
def _(w):
    run = w.run_copy()
    states = sorted(p for p in run.iterdir() if p.name.startswith("last.") and p.suffix != ".json")
    for state in states:
        if state.suffix == ".pt":
            state.write_bytes(pickle.dumps(Boom()))
    if not any(s.suffix == ".pt" for s in states):
        (run / "last.safetensors").write_bytes(pickle.dumps(Boom()))
    return Expect(["train", "--resume", run, "--set", "schedule.epochs=2", "-q"], ("run",))


@probe("train --resume torn checkpoint")
def _(w):
    run = w.run_copy()
    data = bytearray((run / "last.safetensors").read_bytes())
    data[-16:] = b"\xff" * 16  # the tensors no longer match the checksums written with them
    (run / "last.safetensors").write_bytes(bytes(data))
    return Expect(["train", "--resume", run, "--set", "schedule.epochs=2", "-q"], ("last",))


@probe("train --resume without its last checkpoint")
def _(w):
    run = w.run_copy()
    (run / "last.safetensors").unlink()
    return Expect(["train", "--resume", run, "--set", "schedule.epochs=2", "-q"], ("run",))


@probe("train --resume a recipe that no longer fits the weights")
def _(w):
    run = w.run_copy()
    return Expect(["train", "--resume", run, "--set", "schedule.epochs=2", "--set", "models.model.args.width=8", "-q"],
                  ("do not fit",))


@probe("train --resume a run that is finished")
def _(w):
    run = w.run_copy()
    return Expect(["train", "--resume", run, "-q"], ("already trained",))


@probe("train --resume locked by another run")
def _(w):
    run = w.run_copy()
    w.lock(run)
    return Expect(["train", "--resume", run, "--set", "schedule.epochs=2", "-q"], ("another cdtool run",))


# evaluate
def masks(w: World) -> tuple[Path, Path]:
    return w.mask("pred.tif"), w.mask("truth.tif")


@probe("evaluate no arguments")
def _(w):
    return Expect(["evaluate"], ("PRED",))


@probe("evaluate PRED missing")
def _(w):
    return Expect(["evaluate", w.p("nopred.tif"), w.mask("truth.tif")], ("nopred.tif",))


@probe("evaluate TRUTH missing")
def _(w):
    return Expect(["evaluate", w.mask("pred.tif"), w.p("notruth.tif")], ("notruth.tif",))


@probe("evaluate TRUTH empty file")
def _(w):
    return Expect(["evaluate", w.mask("pred.tif"), w.file("truth.tif")], ("truth.tif",))


@probe("evaluate sizes differ, no georeference to place them")
def _(w):
    from affine import Affine

    pred, truth = (write_tif(w.p(n), (w.rng.random((s, s)) > 0.7).astype(np.uint8), crs=None,
                             transform=Affine.identity()) for n, s in (("pred.tif", 64), ("truth.tif", 48)))
    return Expect(["evaluate", pred, truth], ("pred.tif", "cannot be placed on one grid"))


@probe("evaluate scores outside [0, 1]")
def _(w):
    odd = write_tif(w.p("scores.tif"), np.linspace(-3, 7, 64 * 64, dtype=np.float32).reshape(64, 64))
    return Expect(["evaluate", odd, w.mask("truth.tif")], ("scores.tif",))


@probe("evaluate folders with no names in common")
def _(w):
    w.mask("preds/a.tif")
    w.mask("truths/b.tif")
    return Expect(["evaluate", w.p("preds"), w.p("truths")], ("preds",))


EVALUATE_OPTIONS = [("--threshold", "7"), ("--threshold", "nan"), ("--threshold", "bogus")]
for _opt, _value in EVALUATE_OPTIONS:
    probe(f"evaluate {_opt} {_value}")(lambda w, o=_opt, v=_value: Expect(["evaluate", *masks(w), o, v], (o,)))


@probe("evaluate --json exists")
def _(w):
    return Expect(["evaluate", *masks(w), "--json", w.file("s.json", "mine")], ("s.json", "--overwrite"))


@probe("evaluate --json a folder")
def _(w):
    w.p("scores").mkdir()
    return Expect(["evaluate", *masks(w), "--json", w.p("scores")], ("scores", "cannot write the scores there"))


@probe("evaluate --json parent missing")
def _(w):
    return Expect(["evaluate", *masks(w), "--json", w.p("nowhere/s.json")], ("s.json",))


@probe("evaluate --json parent a file")
def _(w):
    return Expect(["evaluate", *masks(w), "--json", w.file("plain", "mine") / "s.json"], ("s.json",))


@probe("evaluate --model without --data")
def _(w):
    return Expect(["evaluate", "--model", "cva"], ("--data",))


@probe("evaluate --model and PRED")
def _(w):
    return Expect(["evaluate", *masks(w), "--model", "cva", "--data", w.folder()], ("--model",))


@probe("evaluate --data missing folder")
def _(w):
    return Expect(["evaluate", "--model", "cva", "--data", w.p("nodata")], ("nodata",))


@probe("evaluate --model crafted checkpoint")
def _(w):
    return Expect(["evaluate", "--model", w.ckpt("crafted.safetensors", meta=model_args(width=200000)),
                   "--data", w.folder()], ("crafted.safetensors",))


@probe("evaluate --split bogus")
def _(w):
    w.folder()
    return Expect(["evaluate", "--model", "cva", "--data", w.p("pairs"), "--split", "bogus"], ("--split",))


@probe("evaluate --pairs naming no pair")
def _(w):
    return Expect(["evaluate", "--model", "cva", "--data", w.folder(), "--pairs", "nosuchpair"], ("nosuchpair",))


# stack
@probe("stack --resampling bogus")
def _(w):
    return Expect(["stack", w.p("s.vrt"), w.tif(bands=1), "--resampling", "bogus"], ("--resampling",))


@probe("stack OUT parent missing")
def _(w):
    return Expect(["stack", w.p("missing/s.vrt"), w.tif(bands=1)], ("missing",))


@probe("stack OUT parent a file")
def _(w):
    return Expect(["stack", w.file("plain", "mine") / "s.vrt", w.tif(bands=1)], ("plain",))


@probe("stack OUT a folder")
def _(w):
    w.p("s.vrt").mkdir()
    return Expect(["stack", w.p("s.vrt"), w.tif(bands=1)], ("s.vrt", "is a folder"))


@probe("stack OUT exists")
def _(w):
    return Expect(["stack", w.file("s.vrt", "mine"), w.tif(bands=1)], ("s.vrt", "--overwrite"))


@probe("stack source missing")
def _(w):
    return Expect(["stack", w.p("s.vrt"), w.tif(bands=1), w.p("B99.tif")], ("B99.tif",))


@probe("stack source an empty folder")
def _(w):
    w.p("bands").mkdir()
    return Expect(["stack", w.p("s.vrt"), w.p("bands")], ("bands",))


@probe("stack source not a raster")
def _(w):
    return Expect(["stack", w.p("s.vrt"), w.tif(bands=1), w.file("junk.tif", "text")], ("junk.tif",))


@probe("stack grids do not overlap")
def _(w):
    far = w.tif("far.tif", bands=1, transform=Affine(10, 0, 900000, 0, -10, 5000000))
    return Expect(["stack", w.p("s.vrt"), w.tif(bands=1), far], ("far.tif", "overlap"))


@probe("stack CRS differ")
def _(w):
    geo = w.tif("geo.tif", bands=1, crs="EPSG:4326", transform=Affine(1e-4, 0, 9, 0, -1e-4, 45))
    return Expect(["stack", w.p("s.vrt"), w.tif(bands=1), geo], ("geo.tif",))


@probe("stack named pipe as a band")
def _(w):
    os.mkfifo(w.p("pipe.tif"))
    return Expect(["stack", w.p("s.vrt"), w.tif(bands=1), w.p("pipe.tif")], ("pipe.tif",))


# hostile sizes, grids, weights, recipes and addresses (each ended in "unexpected ...", a hang or a leftover folder)
def huge_tiff(w: World, name: str = "huge.tif", side: int = 10**6) -> Path:
    """A TIFF of about 120 bytes whose header claims side x side pixels in one empty (sparse) strip."""
    tags = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 4, side), (279, 4, 0)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", v, 0) if kind == 3 else struct.pack("<I", v))
        for tag, kind, v in tags) + struct.pack("<I", 0)
    return w.file(name, b"II*\x00" + struct.pack("<I", 8) + ifd)


@probe("detect a 120-byte TIFF whose header claims 10^6 x 10^6 pixels")
def _(w):
    huge = huge_tiff(w)
    return Expect(detect_args(w, before=huge, after=huge), ("huge.tif", "1000000x1000000", "--max-pixels"))


@probe("detect /vsizip/ of a raster above the pixel limit")
def _(w):
    import zipfile

    huge = huge_tiff(w, ".huge.tif", side=200_000)
    with zipfile.ZipFile(w.p("huge.zip"), "w") as z:
        z.write(huge, "huge.tif")
    huge.unlink()
    name = f"/vsizip/{w.p('huge.zip')}/huge.tif"
    return Expect(detect_args(w, before=name, after=name), ("huge.zip", "--max-pixels"))


@probe("detect above --max-pixels")
def _(w):
    return Expect(detect_args(w, "--max-pixels", "4000"), ("before.tif", "64x64", "--max-pixels 4096"))


for _value, _word in (("0", "got 0"), ("-5", "got -5"), ("abc", "integer")):
    probe(f"detect --max-pixels {_value}")(lambda w, v=_value, word=_word: Expect(detect_args(w, "--max-pixels", v),
                                                                                 ("--max-pixels", word)))


def rotated_band_folder(w: World) -> Path:
    """A band folder whose second band lies on a grid rotated 90 degrees from the first's."""
    w.p("rot").mkdir()
    w.tif("rot/B02.tif", bands=1)
    w.tif("rot/B03.tif", bands=1, transform=Affine(0, 10, 600000, 10, 0, 4999360))
    return w.p("rot")


@probe("detect band folder with one band on a rotated grid")
def _(w):
    rot = rotated_band_folder(w)
    return Expect(detect_args(w, before=rot, after=rot), ("B03.tif", "rotated"))


def crafted_weights(w: World, edit: Callable[[dict], None] | None = None, card: dict | None = None,
                    in_channels: int = 3) -> Path:
    """A checkpoint of a small fc_siam_diff whose weights (edited in place by `edit`) and card are crafted."""
    model = create_model("fc_siam_diff", width=4, in_channels=in_channels)
    state = model.state_dict()
    if edit is not None:
        edit(state)
    meta = {"model": {"name": "fc_siam_diff", "args": {"width": 4, "in_channels": in_channels}},
            "normalization": {"mode": "per-image"}, "threshold": 0.5, **({"card": card} if card else {})}
    return save_checkpoint(w.p("crafted.safetensors"), {"model": state}, meta)


def _fill(value: float) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        for t in state.values():
            if t.is_floating_point():
                t.fill_(value)
    return edit


def _one_nan_bias(state: dict) -> None:
    next(t for k, t in state.items() if k.endswith("bias"))[0] = float("nan")


WEIGHT_EDITS = {"all NaN": dict(edit=_fill(float("nan"))), "all +Inf": dict(edit=_fill(float("inf"))),
                "one NaN in a bias": dict(edit=_one_nan_bias)}
for _kind, _kw in WEIGHT_EDITS.items():
    probe(f"detect --model weights {_kind}")(lambda w, kw=_kw: Expect(
        _model(w, crafted_weights(w, **kw)), ("crafted.safetensors", "not finite")))
    probe(f"info weights {_kind}")(lambda w, kw=_kw: Expect(
        ["info", crafted_weights(w, **kw)], ("crafted.safetensors", "not finite")))


@probe("detect --model card of 3 bands over weights for 13")
def _(w):
    path = crafted_weights(w, card={"band_count": 3}, in_channels=13)
    return Expect(_model(w, path), ("crafted.safetensors", "3 bands", "13"))


@probe("detect --model card of 13 bands over weights for 3")
def _(w):
    path = crafted_weights(w, card={"band_count": 13}, in_channels=3)
    return Expect(_model(w, path), ("crafted.safetensors", "13 bands", "3"))


def _nested(depth: int) -> Callable[[dict], str]:
    return lambda meta: '{"model": ' + "[" * depth + "]" * depth + "}"


for _depth in (100_000, 200_000):
    probe(f"detect --model metadata nested {_depth} deep")(lambda w, d=_depth: Expect(
        _model(w, w.ckpt("crafted.safetensors", meta=_nested(d))), ("crafted.safetensors", "nested")))
    probe(f"info metadata nested {_depth} deep")(lambda w, d=_depth: Expect(
        ["info", w.ckpt("crafted.safetensors", meta=_nested(d))], ("crafted.safetensors", "nested")))


def alias_bomb(levels: int = 10, flow: bool = False) -> str:
    """Billion laughs: `levels` anchors, each a list of 9 aliases of the one before (9**levels leaves)."""
    rows = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"] + [
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "{" + ", ".join(rows) + "}" if flow else "\n".join(rows) + "\n"


YAML_BOMBS = {  # (lines added to a recipe, the same as a --set value)
    "billion laughs (9^10 leaves)": (alias_bomb(), alias_bomb(flow=True)),
    "a recursive alias": ("self: &s {again: *s}\n", "&s {again: *s}"),
}
for _kind, (_text, _value) in YAML_BOMBS.items():
    probe(f"train recipe with {_kind}")(lambda w, t=_text: Expect(
        train_args(w, recipe=w.file("bad.yaml", yaml.safe_dump(tiny_recipe(w.folder())) + t)), ("bad.yaml", "alias")))
    probe(f"train --set with {_kind}")(lambda w, v=_value: Expect(train_args(w, "--set", "seed=" + v),
                                                                 ("--set", "alias")))


for _address in ("not-an-address", "tcp://", "http://127.0.0.1:8786", "tcp://127.0.0.1:1"):
    probe(f"detect --scheduler {_address}")(lambda w, a=_address: Expect(
        detect_args(w, "--scheduler", a), ("--scheduler",)))


# -- running them ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    model = create_model("fc_siam_diff", width=4, in_channels=3)
    meta = {"model": {"name": "fc_siam_diff", "args": {"width": 4, "in_channels": 3}},
            "normalization": {"mode": "per-image"}, "threshold": 0.5}
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "m.safetensors", {"model": model.state_dict()},
                           meta).read_bytes()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One finished one-epoch run of the tiny recipe, copied by the probes that tamper with a run."""
    root = tmp_path_factory.mktemp("trained")
    recipe = root / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(make_pair_folder(root / "pairs", n=4, size=32),
                                                 **{"schedule.epochs": 1})))
    r = runner.invoke(app, ["train", str(recipe), "-o", str(root / "run"), "-q"])
    assert r.exit_code == 0, r.output
    return root / "run"


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its content's hash (folders and links marked as such)."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink() or path.is_fifo():
            state[rel] = "special"
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def mount_read_only(folder: Path) -> bool:
    """An empty read-only file system at `folder` (root can write anywhere else); False where mounting fails."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@probe("detect --out on a read-only file system")
def _(w):
    if not mount_read_only(w.p("ro")):
        pytest.skip("cannot mount a read-only file system here")
    return Expect(detect_args(w, out=w.p("ro") / "out"), ("ro",))


@probe("tile --out on a read-only file system")
def _(w):
    if not mount_read_only(w.p("ro")):
        pytest.skip("cannot mount a read-only file system here")
    return Expect(tile_args(w, out=w.p("ro") / "tiles"), ("ro",))


@probe("train --out on a read-only file system")
def _(w):
    if not mount_read_only(w.p("ro")):
        pytest.skip("cannot mount a read-only file system here")
    return Expect(train_args(w)[:3] + [w.p("ro") / "run", "-q"], ("ro",))


@probe("stack OUT on a read-only file system")
def _(w):
    if not mount_read_only(w.p("ro")):
        pytest.skip("cannot mount a read-only file system here")
    return Expect(["stack", w.p("ro") / "s.vrt", w.tif(bands=1)], ("s.vrt",))


@probe("evaluate --json on a read-only file system")
def _(w):
    if not mount_read_only(w.p("ro")):
        pytest.skip("cannot mount a read-only file system here")
    return Expect(["evaluate", *masks(w), "--json", w.p("ro") / "s.json"], ("s.json",))


@pytest.fixture
def world(tmp_path, checkpoint_bytes, trained_run):
    root = tmp_path / "w"
    root.mkdir()
    yield World(root, checkpoint_bytes, trained_run)
    for mount in (root / "ro",):
        if mount.is_mount():
            subprocess.run(["umount", str(mount)], check=False)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_there_are_at_least_130_kinds_of_probe():
    assert len(PROBES) >= 130, len(PROBES)


@pytest.mark.parametrize("name", list(PROBES))
def test_probe(name, world, monkeypatch):
    monkeypatch.chdir(world.root)  # nothing may land in the working directory either
    expect = PROBES[name](world)
    before = snapshot(world.root)
    result = runner.invoke(app, [str(a) for a in expect.args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        name + ": raised\n" + "".join(traceback.format_exception(result.exception))
    assert result.exit_code == expect.code, f"{name}: exit {result.exit_code}\n{result.output}"
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: stderr is not one error line:\n{result.stderr}"
    for word in expect.words:
        assert str(word) in lines[0], f"{name}: {word!r} not in {lines[0]!r}"
    assert "Traceback" not in result.output
    after = snapshot(world.root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{name}: files changed: {changed}"
    assert not Path("/tmp/cdtool-probe-pwned").exists(), f"{name}: ran a stranger's code"
