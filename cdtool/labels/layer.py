"""`cdtool labels init`: the empty polygon layer an analyst draws labels into, already in BEFORE's CRS, with the
0/1 field the fit reads and a style (changed red, unchanged blue outlines) that QGIS loads with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cdtool.errors import InputError
from cdtool.labels.read import DEFAULT_FIELD

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}  # one file each: written whole, then renamed


def init_layer(path: str | Path, like: str | Path, field: str = DEFAULT_FIELD, overwrite: bool = False) -> list[Path]:
    """Write the empty layer and its .qml style beside it; the files written."""
    import pyogrio

    from cdtool.io.outputs import OutputSet
    from cdtool.io.pair import open_raster
    from cdtool.io.qgis_style import labels_qml, write_text

    path = Path(path)
    driver = DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise InputError(f"{path}: the layer must end in {', '.join(DRIVERS)}")
    with open_raster(like) as ds:
        georef = ds.crs is not None and not ds.transform.is_identity
        crs = ds.crs.to_wkt() if georef else None
    style = path.with_suffix(".qml")
    with OutputSet(path.parent, [path.name, style.name], overwrite, [Path(like)]) as outs:
        pyogrio.raw.write(str(outs.path(path.name)), geometry=np.array([], dtype=object), field_data=[np.array([], np.int32)],
                          fields=[field], geometry_type="Polygon", crs=crs, driver=driver,
                          layer=path.stem if driver == "GPKG" else None)
        write_text(outs.path(style.name), labels_qml(field))
        return list(outs.commit().values())
