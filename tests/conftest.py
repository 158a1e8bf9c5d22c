"""Shared fixtures: the ../shared/data folder, and tiny GeoTIFFs built from arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real sample data not found at {SHARED}")
    return SHARED


def write_tif(path: Path, array: np.ndarray, crs: str | None = "EPSG:32632",
              transform: Affine = Affine(10, 0, 600000, 0, -10, 5000000), nodata=None) -> Path:
    """A GeoTIFF from a (bands, h, w) or (h, w) array."""
    a = array if array.ndim == 3 else array[None]
    with rasterio.open(path, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0],
                       dtype=a.dtype, crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(a)
    return path


@pytest.fixture
def make_tif(tmp_path):
    def make(name: str, array: np.ndarray, **kw) -> Path:
        return write_tif(tmp_path / name, array, **kw)

    return make


@pytest.fixture
def small_pair(tmp_path):
    """A generated 300x300 3-band pair with known changes (before, after, truth)."""
    from cdtool.generated_pairs import write_pair

    return write_pair(tmp_path / "pair", size=300, bands=3, seed=1, rate=0.6)
