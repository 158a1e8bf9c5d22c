"""report.html: one self-contained page an analyst can send on without QGIS or the rasters: what was compared
(files, dates), how (model and why it was chosen, threshold), what changed (area, share, regions), the
preview with its colour bar, and the largest regions with their coordinates and before / after / score crops.

Images are embedded as base64 PNGs, so the file opens anywhere, offline, and travels as one attachment. The
crops are read from the open pair (a few windows), so the report costs no second pass over the rasters."""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from cdtool.io.dates import acquisition_date
from cdtool.io.outputs import write_text_atomic
from cdtool.io.preview import display_bands, stretch_for_display
from cdtool.windows import Tile

CROP = 96  # pixels on a side of each region's crops
SCORE_CMAP = "magma"  # as the preview's score panel

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}table{border-collapse:collapse}
td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{color:#555;font-weight:600}img{image-rendering:pixelated}.crops img{width:128px;margin-right:4px}
.note{color:#8a4b00}.small{color:#666;font-size:.9em}"""


def _png(rgb: np.ndarray) -> str:
    """(h, w, 3) or (h, w) floats in [0, 1] -> a data: URI of a PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colour_bar(threshold: float) -> str:
    """An inline SVG of the score colour map from 0 to 1, the threshold marked."""
    from matplotlib import colormaps

    cmap = colormaps[SCORE_CMAP]
    stops = "".join(f'<stop offset="{v:.2f}" stop-color="#{"".join(f"{round(c * 255):02x}" for c in cmap(v)[:3])}"/>'
                    for v in np.linspace(0, 1, 11))
    x = 10 + 300 * min(max(threshold, 0.0), 1.0)
    return (f'<svg width="340" height="46" xmlns="http://www.w3.org/2000/svg"><defs><linearGradient id="g">{stops}'
            '</linearGradient></defs><rect x="10" y="4" width="300" height="14" fill="url(#g)"/>'
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="22" stroke="#0a0" stroke-width="2"/>'
            '<text x="10" y="36" font-size="11">0</text><text x="300" y="36" font-size="11">1</text>'
            f'<text x="{x - 30:.1f}" y="36" font-size="11" fill="#070">mask at {threshold:.3f}</text></svg>')


def _area(m2: float | None, pixels: int) -> str:
    if m2 is None:
        return f"{pixels:,} px"
    return f"{m2 / 1e4:,.2f} ha" if m2 >= 1e4 else f"{m2:,.0f} m²"


def _lon_lat(crs, x: float, y: float) -> str:
    if crs is None:
        return ""
    from rasterio.warp import transform

    lon, lat = transform(crs, "EPSG:4326", [x], [y])
    return f"{lat[0]:.5f}, {lon[0]:.5f}"


def _crops(pair, prob_path: Path, row: int, col: int) -> list[str]:
    """Before, after and score crops centred on (row, col) of the pair's grid, as data URIs."""
    import rasterio
    from matplotlib import colormaps

    height, width = pair.shape
    size = min(CROP, height, width)
    r0 = min(max(row - size // 2, 0), height - size)
    c0 = min(max(col - size // 2, 0), width - size)
    data, valid = pair.read(Tile(r0, c0, size, size))
    show = display_bands(pair.info.band_names)
    uris = []
    for date in data:
        img = date[show].astype(np.float32)
        img[:, ~valid] = np.nan
        uris.append(_png(stretch_for_display(img)))
    with rasterio.open(prob_path) as ds:
        score = ds.read(1, window=Window(c0, r0, size, size)).astype(np.float32)
        if ds.count == 2:  # 8-bit PNG outputs: grey x 255, alpha 0 at nodata
            score_valid, score = ds.read(2, window=Window(c0, r0, size, size)) > 0, score / 255.0
        else:
            score_valid = score >= 0
    rgb = colormaps[SCORE_CMAP](np.clip(score, 0, 1))[..., :3]
    rgb[~score_valid] = 1.0
    uris.append(_png(rgb))
    return uris


def _pixel(pair, x: float, y: float) -> tuple[int, int]:
    """(row, col) on the pair's grid of a point given in the outputs' coordinates."""
    if pair.info.georeferenced:
        col, row = ~pair.info.transform * (x, y)
    else:  # the pixel grid the outputs use: x = column, y = -row
        col, row = x, -y
    return int(row), int(col)


def _facts(summary: dict, pair) -> list[tuple[str, str]]:
    opts, areas = summary.get("options", {}), summary.get("summary", {})
    choice = summary.get("model_choice", {})
    changed_m2, valid_m2 = areas.get("changed_area_m2"), areas.get("valid_area_m2")
    method = "fixed (--threshold)" if isinstance(opts.get("threshold"), (int, float)) else \
        f"automatic ({opts.get('threshold') or 'the model default'})"
    facts = [("before", f"{summary['before']} — {acquisition_date(pair.before, summary['before']) or 'date unknown'}"),
             ("after", f"{summary['after']} — {acquisition_date(pair.after, summary['after']) or 'date unknown'}"),
             ("model", choice.get("reason") or summary.get("model", "")),
             ("threshold", f"{summary['threshold']:.4f}, {method}"),
             ("changed", f"{_area(changed_m2, summary['changed_pixels'])} of {_area(valid_m2, summary['valid_pixels'])}"
                         f" ({100 * summary['changed_share']:.2f} % of valid pixels)"),
             ("regions", f"{summary.get('regions', 0):,} (minimum mapping unit "
                         f"{_area(areas.get('min_area_m2'), areas.get('min_pixels') or 1)})"),
             ("grid", f"{summary['width']:,} × {summary['height']:,} pixels"
                      + (f", {summary['gsd']:.3g} m per pixel" if summary.get("gsd") else "")
                      + (f", {pair.info.crs.to_string()}" if pair.info.crs is not None else ", no georeference")),
             ("run", f"{summary.get('seconds', 0):.1f} s on {summary.get('device', 'cpu')}")]
    return facts


def write_report(path: Path, summary: dict, pair, prob_path: Path, preview: Path | None = None) -> Path:
    """Write report.html for a finished detection: `summary` is detect.json's content, `pair` the open pair,
    `prob_path` the written score map, `preview` the preview PNG (embedded when given)."""
    from cdtool import __version__

    esc = html.escape
    title = f"Change between {_label(summary['before'])} and {_label(summary['after'])}"
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _facts(summary, pair))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>",
             f"<p class='small'>cdtool {esc(__version__)}, "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p><table>{rows}</table>"]
    for line in summary.get("model_choice", {}).get("warnings", []) + summary.get("notes", []):
        parts.append(f"<p class='note'>{esc(line)}</p>")
    if preview is not None and preview.exists():
        uri = "data:image/png;base64," + base64.b64encode(preview.read_bytes()).decode("ascii")
        parts.append(f"<h2>Overview</h2><img src='{uri}' style='max-width:100%' alt='preview'>"
                     f"<div>change score {_colour_bar(float(summary['threshold']))}</div>")
    parts.append(_regions_section(summary, pair, prob_path))
    parts.append("</body></html>\n")
    return write_text_atomic(path, "".join(parts))


def _label(source: str) -> str:
    """A file by its name; a band folder (imgs_1, GRANULE/…/IMG_DATA) with its parent, which names the place."""
    path = Path(source)
    return f"{path.parent.name}/{path.name}" if path.is_dir() and path.parent.name else path.name


def _regions_section(summary: dict, pair, prob_path: Path) -> str:
    regions = summary.get("summary", {}).get("largest_regions") or []
    if not regions:
        why = summary.get("polygons_skipped") or "no change region was found (or polygons were not asked for)"
        return f"<h2>Largest regions</h2><p>{html.escape(why)}</p>"
    crs = pair.info.crs if pair.info.georeferenced else None
    head = ("<tr><th>id</th><th>area</th><th>max score</th><th>centre (x, y)</th>"
            + ("<th>lat, lon</th>" if crs is not None else "") + "<th>before · after · score</th></tr>")
    rows = []
    for reg in regions:
        row, col = _pixel(pair, reg["x"], reg["y"])
        crops = "".join(f"<img src='{u}' alt='{a}'>" for u, a in zip(_crops(pair, prob_path, row, col),
                                                                   ("before", "after", "score")))
        rows.append(f"<tr><td>{reg['id']}</td><td>{_area(reg.get('area_m2'), reg['pixels'])}</td>"
                    f"<td>{reg['max_prob']:.3f}</td><td>{reg['x']:.6g}, {reg['y']:.6g}</td>"
                    + (f"<td>{_lon_lat(crs, reg['x'], reg['y'])}</td>" if crs is not None else "")
                    + f"<td class='crops'>{crops}</td></tr>")
    return f"<h2>Largest regions</h2><table>{head}{''.join(rows)}</table>"
