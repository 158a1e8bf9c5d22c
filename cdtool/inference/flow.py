"""`cdtool detect --flow`: the flow a joint flow + change model (`simsac`, paper 001) estimates, as a 2-band
float32 GeoTIFF with a QGIS style, so misregistration between the dates can be inspected.

Band 1 is dx, band 2 dy, in pixels of the input grid: the point AFTER shows at pixel p lies at p + (dx, dy) in
BEFORE (the convention of `cdtool.data.synthetic`). The raster lies on the detection grid (BEFORE's grid;
AFTER is on the same grid, nominally, or warped onto it with --align), nodata NaN where either date is
invalid. Tiles are scored as for the change map (padded to the model's size multiple, blended with the same
tapered windows, streamed row band by row band), so memory does not grow with the raster's height.

Call `write_flow(pair, model, normalizer, device, path, tile, overlap, blend)` after the change map; it
writes `path` and `<path stem>.qml` and returns the mean and 95th percentile of the flow magnitude.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cdtool.errors import InputError
from cdtool.io.outputs import replaced_when_done

FLOW_NODATA = float("nan")


def flow_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module that estimates flow inside detection's wrappers (e.g. `Rescaled`), or InputError."""
    seen = model
    while not hasattr(seen, "forward_flow"):
        inner = getattr(seen, "model", None)
        if not isinstance(inner, torch.nn.Module):
            raise InputError(f"--flow: model {type(model).__name__} estimates no flow; use a checkpoint of a joint "
                             "flow + change model (task flow_change, model simsac)")
        seen = inner
    return seen


@torch.no_grad()
def predict_flow(model: torch.nn.Module, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Flow (B, 2, H, W) for normalised inputs of any size (edge-replicated to the size multiple, cropped)."""
    from cdtool.inference.predictor import pad_to_multiple

    h, w = before.shape[-2:]
    before, after = pad_to_multiple(before, after, int(getattr(model, "size_multiple", 1)))
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


def write_flow(pair, model: torch.nn.Module, normalizer, device: torch.device, path: str | Path, tile: int = 512,
               overlap: int = 64, blend: str = "cosine") -> dict:
    """Estimate the flow over the whole `pair` (a `cdtool.io.pair.RasterPair`) tile by tile and write it to
    `path` (2-band float32 GeoTIFF, deflate, BEFORE's CRS and transform) and its style beside it."""
    import rasterio

    from cdtool.inference.stitcher import Stitcher
    from cdtool.windows import grid

    net = flow_model(model).to(device).eval()
    height, width = pair.shape
    halo = int(getattr(net, "halo", 0))
    align = max(1, int(getattr(net, "size_multiple", 1)))
    overlap = max(overlap, 2 * halo)
    if overlap >= tile and tile < max(height, width):
        raise InputError(f"--flow: --overlap ({overlap}, at least twice the model's halo of {halo}) must be smaller "
                         f"than --tile ({tile})")
    step = max(align, (tile - overlap) // align * align)
    rows = grid(height, width, tile, step, align=align)
    tile_h = rows[0][0].height
    stitch = [Stitcher(height, width, tile_h, halo=halo, blend=blend) for _ in range(2)]
    info = pair.info
    path = Path(path)
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 2, "dtype": "float32",
               "nodata": FLOW_NODATA, "compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256}
    if info.georeferenced:
        profile.update(crs=info.crs, transform=info.transform)
    mags: list[np.ndarray] = []
    with replaced_when_done(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.set_band_description(1, "flow dx (pixels): AFTER(p) shows BEFORE(p + flow)")
        dst.set_band_description(2, "flow dy (pixels)")

        def emit(bands_x, bands_y):
            for bx, by in zip(bands_x, bands_y):
                ok = bx.valid & by.valid
                out = np.stack([np.where(ok, bx.score, np.nan), np.where(ok, by.score, np.nan)]).astype(np.float32)
                dst.write(out, window=rasterio.windows.Window(0, bx.row, width, out.shape[1]))
                mag = np.hypot(out[0], out[1])[ok]
                mags.append(mag[:: max(1, mag.size // 4096)])

        for i, row in enumerate(rows):
            for t in row:
                data, valid = pair.read(t)
                x = torch.from_numpy(normalizer(data)).to(device)
                fl = predict_flow(net, x[None, 0], x[None, 1])[0].cpu().numpy()
                for k in range(2):
                    stitch[k].add(t, fl[k], valid)
            if i + 1 < len(rows):
                nxt = rows[i + 1][0].row
                emit(list(stitch[0].flush(nxt)), list(stitch[1].flush(nxt)))
        emit(list(stitch[0].finish()), list(stitch[1].finish()))
    flow_style(path.with_suffix(".qml"))
    m = np.concatenate(mags) if mags else np.zeros(0)
    return {"mean_px": float(m.mean()) if m.size else None, "p95_px": float(np.percentile(m, 95)) if m.size else None}
