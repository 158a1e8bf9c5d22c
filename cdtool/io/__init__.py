"""Reading raster and panorama pairs, and writing outputs."""
