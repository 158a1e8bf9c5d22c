"""cdtool: change detection between two images of the same place taken at two times."""

__version__ = "0.1.0"
