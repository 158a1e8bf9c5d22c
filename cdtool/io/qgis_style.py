"""QGIS layer styles (.qml) written beside the outputs, so each layer opens in QGIS already legible over any
basemap: scores as a ramp that is transparent below half the threshold (no haze over unchanged ground),
the mask as a semi-transparent red, change polygons as yellow lines on a dark casing (visible over natural
and false-colour imagery alike). PNG outputs (grey + alpha, scores x 255) get the same styles, scaled."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from affine import Affine


def _ramp(threshold: float | None) -> list[tuple[float, str, int]]:
    t = min(max(0.5 if threshold is None else float(threshold), 0.02), 0.98)
    return [(0.0, "#ffffb2", 0), (t / 2, "#ffffb2", 0), (t, "#fecc5c", 170), ((t + 1) / 2, "#fd8d3c", 210),
            (1.0, "#e31a1c", 240)]


def world_file(t: Affine) -> str:
    """An ESRI world file (.pgw for a PNG): pixel size, rotation, and the centre of the top-left pixel."""
    x, y = t * (0.5, 0.5)
    return "\n".join(f"{v:.12g}" for v in (t.a, t.d, t.b, t.e, x, y)) + "\n"


def heatmap_qml(threshold: float | None = None, scale: float = 1.0, alpha_band: int = -1) -> str:
    """Scores in [0, 1] (times `scale`: 255 for the 8-bit PNG); `alpha_band` marks nodata in PNGs."""
    items = "\n".join(f'            <item alpha="{a}" value="{v * scale:g}" label="{v:.2f}" color="{c}"/>'
                      for v, c, a in _ramp(threshold))
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="singlebandpseudocolor" band="1" opacity="1" alphaBand="{alpha_band}"
                    classificationMin="0" classificationMax="{scale:g}" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin><limits>None</limits><extent>WholeRaster</extent><statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower><cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor></minMaxOrigin>
      <rastershader>
        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0"
                         minimumValue="0" maximumValue="{scale:g}" labelPrecision="2">
{items}
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" colorizeOn="0" grayscaleMode="0" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def paletted_qml(entries: list[tuple[int, str, int, str]], alpha_band: int = -1) -> str:
    """A paletted raster style: (value, colour, alpha 0-255, label) per class."""
    palette = "\n".join(f'        <paletteEntry value="{v}" alpha="{a}" label={quoteattr(label)} color="{c}"/>'
                         for v, c, a, label in entries)
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="{alpha_band}" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{palette}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" colorizeOn="0" grayscaleMode="0" invertColors="0"/>
    <rasterresampler/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def mask_qml(changed_value: int = 1, alpha_band: int = -1) -> str:
    """Changed pixels in semi-transparent red (the basemap and the score stay readable), the rest clear."""
    return paletted_qml([(0, "#000000", 0, "unchanged"), (changed_value, "#e31a1c", 110, "changed")], alpha_band)



def _outline_layer(rgba: str, width_mm: float, ground_m: float | None = None, min_mm: float = 0.0) -> str:
    """A fill symbol layer drawing only an outline: `width_mm` wide, or `ground_m` metres on the ground kept
    between `min_mm` and `width_mm` on screen (thin over a whole scene, legible zoomed in)."""
    if ground_m is None:
        width, unit, scale = f"{width_mm:g}", "MM", "3x:0,0,0,0,0,0"
    else:
        width, unit, scale = f"{ground_m:g}", "RenderMetersInMapUnits", f"3x:0,0,1,{min_mm:g},1,{width_mm:g}"
    return f"""        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <Option type="Map">
            <Option type="QString" name="color" value="0,0,0,0"/>
            <Option type="QString" name="outline_color" value="{rgba}"/>
            <Option type="QString" name="outline_style" value="solid"/>
            <Option type="QString" name="outline_width" value="{width}"/>
            <Option type="QString" name="outline_width_unit" value="{unit}"/>
            <Option type="QString" name="border_width_map_unit_scale" value="{scale}"/>
            <Option type="QString" name="style" value="no"/>
          </Option>
        </layer>
"""


def polygons_qml(gsd: float | None = None) -> str:
    """Yellow outlines on a dark casing, drawn in that order, no fill. With the pixel size `gsd` (metres) the
    lines are sized on the ground (casing 0.8 pixel, line 0.35), between a hairline and 1.1 / 0.5 mm: over a
    whole scene of small regions fixed millimetres painted it dark."""
    casing = _outline_layer("20,20,20,220", 1.1, 0.8 * gsd if gsd else None, 0.15)
    line = _outline_layer("255,237,0,255", 0.5, 0.35 * gsd if gsd else None, 0.08)
    layers = casing + line
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="Symbology|Labeling">
  <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">
    <symbols>
      <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
{layers}      </symbol>
    </symbols>
  </renderer-v2>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


def layer_metadata_qmd(title: str, abstract: str) -> str:
    """A layer's metadata sidecar (`<layer>.qmd`): where QGIS reads a layer's title and abstract when it adds
    the layer (a style .qml carries neither: QGIS 3.22 drops a title written there)."""
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22">
  <identifier>{escape(title)}</identifier>
  <parentidentifier></parentidentifier>
  <language></language>
  <type>dataset</type>
  <title>{escape(title)}</title>
  <abstract>{escape(abstract)}</abstract>
  <links/>
</qgis>
"""


def labels_qml(field: str = "change") -> str:
    """An analyst's label polygons by their 0/1 field: changed as red outlines, unchanged as blue, no fill (the
    imagery under them stays visible while drawing)."""
    symbols = "".join(f"""      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">
{_outline_layer(rgba, 0.7)}      </symbol>
""" for i, rgba in enumerate(("227,26,28,255", "31,120,180,255")))
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="Symbology">
  <renderer-v2 type="categorizedSymbol" attr="{field}" symbollevels="0" enableorderby="0" forceraster="0">
    <categories>
      <category value="1" symbol="0" label="changed (1)" render="true"/>
      <category value="0" symbol="1" label="unchanged (0)" render="true"/>
    </categories>
    <symbols>
{symbols}    </symbols>
  </renderer-v2>
  <blendMode>0</blendMode>
  <featureBlendMode>0</featureBlendMode>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
