"""`cdtool detect --flow`: the flow a joint flow + change model (`simsac`, paper 001) estimates, as a 2-band
float32 Cloud-optimised GeoTIFF with a QGIS style, so misregistration between the dates can be inspected.

Band 1 is dx, band 2 dy, in pixels of the input grid: the point AFTER shows at pixel p lies at p + (dx, dy) in
BEFORE (the convention of `cdtool.data.synthetic`). The raster lies on the detection grid (BEFORE's grid;
AFTER is on the same grid, nominally, or warped onto it with --align), nodata NaN where either date is
invalid. The flow head runs through the change map's runner, on its grid (tiles padded to the model's size
multiple, read ahead and batched, blended with the same tapered windows, streamed row band by row band), so
memory does not grow with the raster's height.

Call `write_flow(pair, plan, path)` with the change map's plan; it writes `path` and `<path stem>.qml` and
returns the mean and 95th percentile of the flow magnitude.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cdtool.errors import InputError
from cdtool.inference.runner import Sink
from cdtool.io.outputs import replaced_when_done
from cdtool.io.writers import BLOCK, copy_cog

FLOW_NODATA = float("nan")


def flow_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module that estimates flow inside detection's wrappers (e.g. `Rescaled`), or InputError."""
    seen = model
    while not seen.estimates_flow:
        seen = seen.wrapped
        if seen is None:
            raise InputError(f"--flow: model {type(model).__name__} estimates no flow; use a checkpoint of a joint "
                             "flow + change model (task flow_change, model simsac)")
    return seen


@torch.no_grad()
def predict_flow(model: torch.nn.Module, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Flow (B, 2, H, W) for normalised inputs of any size (edge-replicated to the size multiple, cropped)."""
    from cdtool.inference.predictor import pad_to_multiple

    h, w = before.shape[-2:]
    before, after = pad_to_multiple(before, after, int(model.size_multiple))
    return model.forward_flow(before, after)[..., :h, :w].float()


def flow_style(path: Path, scale: float = 4.0) -> None:
    """A QGIS style: pseudocolour of band 1 (dx) on a diverging ramp from -scale to +scale pixels (band 2 is
    read the same way by picking it in the layer's symbology)."""
    path.write_text(f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="0.8" classificationMin="{-scale}" classificationMax="{scale}">
      <rastershader>
        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0" minimumValue="{-scale}" maximumValue="{scale}">
          <item value="{-scale}" color="#2166ac" alpha="255" label="dx {-scale:g} px"/>
          <item value="0" color="#f7f7f7" alpha="0" label="0"/>
          <item value="{scale}" color="#b2182b" alpha="255" label="dx +{scale:g} px"/>
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
  </pipe>
</qgis>
""")


class FlowPredictor:
    """A joint model's flow head as the runner's predictor: raw (2, C, h, w) stacks of one batch -> (2, h, w)
    float32 flows (dx, dy), normalised as the change scores are."""

    def __init__(self, net: torch.nn.Module, normalizer, device: torch.device):
        self.net, self.normalizer, self.device = net.to(device).eval(), normalizer, device

    def portable(self) -> "FlowPredictor":
        """A copy that runs on the CPU, to send to worker processes (on the CPU, the same object)."""
        return self if self.device.type == "cpu" else FlowPredictor(self.net, self.normalizer, torch.device("cpu"))

    @torch.inference_mode()
    def __call__(self, stacks: list[np.ndarray]) -> list[np.ndarray]:
        from cdtool.inference.predictor import float_on_device

        out: list[np.ndarray | None] = [None] * len(stacks)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(stacks):
            by_shape.setdefault(s.shape[-2:], []).append(i)
        for idx in by_shape.values():
            x = self.normalizer.torch(float_on_device(np.stack([stacks[i] for i in idx]), self.device))
            y = predict_flow(self.net, x[:, 0], x[:, 1]).cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = y[j]
        return out  # type: ignore[return-value]


class FlowWriter(Sink):
    """The runner's sink for flow bands: staged as a 2-band float32 GeoTIFF beside `path` (NaN where either date
    is invalid), copied into a Cloud-optimised GeoTIFF (BEFORE's CRS and transform, overviews) at `path` once
    complete; with a sample of the flow magnitudes for its summary."""

    def __init__(self, path: Path, pair):
        import rasterio

        height, self.width = pair.shape
        profile = {"driver": "GTiff", "height": height, "width": self.width, "count": 2, "dtype": "float32",
                   "nodata": FLOW_NODATA, "compress": "zstd", "zstd_level": 1, "tiled": True,
                   "blockxsize": BLOCK, "blockysize": BLOCK}
        if pair.info.georeferenced:
            profile.update(crs=pair.info.crs, transform=pair.info.transform)
        self.path, self.mags = Path(path), []
        self.staged = self.path.with_name(f".{self.path.stem}.staged.tif")
        self.dst = rasterio.open(self.staged, "w", **profile)
        self.dst.set_band_description(1, "flow dx (pixels): AFTER(p) shows BEFORE(p + flow)")
        self.dst.set_band_description(2, "flow dy (pixels)")

    def add(self, band) -> None:
        from rasterio.windows import Window

        ok = band.valid
        out = np.where(ok, band.score, np.float32(np.nan)).astype(np.float32)
        self.dst.write(out, window=Window(0, band.row, self.width, out.shape[1]))
        mag = np.hypot(out[0], out[1])[ok]
        self.mags.append(mag[:: max(1, mag.size // 4096)])

    def close(self) -> None:
        from rasterio.enums import Resampling

        try:
            self.dst.close()
            with replaced_when_done(self.path) as tmp:
                copy_cog(self.staged, tmp, Resampling.average)
        finally:
            self.staged.unlink(missing_ok=True)
        flow_style(self.path.with_suffix(".qml"))

    def abort(self) -> None:
        self.dst.close()
        self.staged.unlink(missing_ok=True)

    def statistics(self) -> dict:
        """Mean and 95th percentile of the flow magnitude, in pixels."""
        m = np.concatenate(self.mags) if self.mags else np.zeros(0)
        return {"mean_px": float(m.mean()) if m.size else None,
                "p95_px": float(np.percentile(m, 95)) if m.size else None}


def write_flow(pair, plan, path: str | Path, how=None) -> dict:
    """Estimate the flow over the whole `pair` (a `cdtool.io.pair.RasterPair`) on the grid of `plan` (the
    change map's, `cdtool.inference.runner.plan_scoring`) and write it to `path`, with its style beside it;
    the flow head runs on the input's pixels (a `Rescaled` wrapper is looked through)."""
    from cdtool.inference.runner import run, with_predictor

    net = flow_model(plan.detector.model)
    flow_plan = with_predictor(plan, FlowPredictor(net, plan.predictor.normalizer, plan.predictor.device),
                               int(net.halo))
    writer = FlowWriter(Path(path), pair)
    run(pair, flow_plan, [writer], how, channels=2)
    return writer.statistics()
