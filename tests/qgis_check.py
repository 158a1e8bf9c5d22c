"""Run by Debian's python3 with PyQGIS (not by pytest): load cdtool's outputs as QGIS would, apply the
.qml styles, render a map, and print what was seen as JSON for tests/test_qgis.py to check."""

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (QgsApplication, QgsMapRendererSequentialJob, QgsMapSettings, QgsRasterLayer,  # noqa: E402
                       QgsVectorLayer)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402

out, png = sys.argv[1], sys.argv[2]
basemap = sys.argv[3] if len(sys.argv) > 3 else None  # optional: render over the BEFORE image
app = QgsApplication([], False)
app.initQgis()
ext = "tif" if os.path.exists(os.path.join(out, "change_prob.tif")) else "png"  # PNG for non-georeferenced pairs
layers = {
    "prob": QgsRasterLayer(os.path.join(out, f"change_prob.{ext}"), "change score"),
    "mask": QgsRasterLayer(os.path.join(out, f"change_mask.{ext}"), "change mask"),
    "polys": QgsVectorLayer(os.path.join(out, "changes.gpkg") + "|layername=changes", "changes", "ogr"),
}
styles = {"prob": "change_prob.qml", "mask": "change_mask.qml", "polys": "changes.qml"}
report = {}
for key, layer in layers.items():
    info = {"valid": layer.isValid(), "crs": layer.crs().authid()}
    if layer.isValid():
        _, ok = layer.loadNamedStyle(os.path.join(out, styles[key]))
        layer.loadDefaultMetadata()  # as QGIS does when it adds a layer: the .qmd beside the file
        info["title"] = layer.metadata().title()
        e = layer.extent()
        info.update(style_loaded=bool(ok), extent=[e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()],
                    renderer=layer.renderer().type())
        if key == "polys":
            info["features"] = layer.featureCount()
            from qgis.core import QgsUnitTypes  # noqa: E402

            casing = layer.renderer().symbol().symbolLayer(0)
            info["outline"] = [QgsUnitTypes.encodeUnit(casing.strokeWidthUnit()), casing.strokeWidth(),
                               casing.strokeWidthMapUnitScale().minSizeMM, casing.strokeWidthMapUnitScale().maxSizeMM]
        elif ext == "tif":
            info["overviews"] = layer.dataProvider().hasPyramids()
    report[key] = info

settings = QgsMapSettings()
drawn = [layers["polys"], layers["mask"], layers["prob"]]
if basemap:
    base = QgsRasterLayer(basemap, "before")
    report["basemap"] = {"valid": base.isValid()}
    drawn.append(base)
settings.setLayers(drawn)
settings.setDestinationCrs(layers["prob"].crs())
settings.setExtent(layers["prob"].extent())
settings.setOutputSize(QSize(600, 600))
settings.setBackgroundColor(QColor(255, 255, 255))
job = QgsMapRendererSequentialJob(settings)
job.start()
job.waitForFinished()
image = job.renderedImage()
image.save(png, "PNG")
reds = yellows = whites = 0
for y in range(0, image.height(), 2):
    for x in range(0, image.width(), 2):
        c = QColor(image.pixel(x, y))
        if c.red() > 180 and c.green() < 140 and c.blue() < 140:
            reds += 1  # the score's upper ramp, or the semi-transparent red mask
        elif c.red() > 200 and c.green() > 200 and c.blue() < 90:
            yellows += 1  # polygon outlines
        elif c.red() > 245 and c.green() > 245 and c.blue() > 245:
            whites += 1  # the background left visible: low scores are transparent
report["render"] = {"width": image.width(), "height": image.height(), "red_samples": reds,
                    "yellow_samples": yellows, "background_share": whites / ((image.width() // 2) * (image.height() // 2))}
print(json.dumps(report), flush=True)
# PyQGIS may crash while tearing down layers at interpreter exit; the report is out, so leave at once.
os._exit(0)
