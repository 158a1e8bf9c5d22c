"""What a model was trained on (its card) and whether an input lies inside that domain.

A trained model is only as good as the data it saw: a checkpoint carries a `ModelCard` (band layout,
value range, ground sampling distance, kind of change, data and recipe), `InputDomain` describes the
pair a user brings (bands, dtype, GSD from the raster transform or `--gsd`), and `mismatches` names
every way the two differ, so detection can pick a model whose domain covers the input, resample windows
to the model's GSD, or warn in one line when a model the user named is out of its depth.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from cdtool.errors import InputError

RGB = ("red", "green", "blue")
# Sentinel-2's bands in its own order; B10 (cirrus) carries no surface signal and L2A products lack it.
SENTINEL2 = ("1", "2", "3", "4", "5", "6", "7", "8", "8A", "9", "10", "11", "12")
SENTINEL2_SURFACE = tuple(b for b in SENTINEL2 if b != "10")
# Names that identify a band as something other than visible red, green or blue.
_NOT_RGB = re.compile(r"(nir|swir|infrared|thermal|red.?edge)", re.I)
_S2_BAND = re.compile(r"(?<![A-Za-z0-9])B(0[1-9]|1[0-2]|8A|[1-9])(?![A-Za-z0-9])", re.I)
_WAVELENGTH = re.compile(r"(\d+(?:\.\d+)?)\s*(micrometers|micrometres|um|µm|nm)", re.I)
# How far windows may be resampled to reach a model's GSD before the input counts as outside its domain.
MAX_RESAMPLE = 4.0


@dataclass(frozen=True)
class ModelCard:
    """The domain of a model's training data. None means "any" (label-free methods) or "not recorded"."""

    layout: str | None = None  # "rgb", "sentinel2", or None for any band layout
    band_count: int | None = None
    band_names: list[str] | None = None
    value_range: str = "any (each date is standardised per band)"
    gsd_m: tuple[float, float] | None = None  # effective GSDs seen in training (after scale augmentation)
    usable_gsd_m: tuple[float, float] | None = None  # input GSDs where it beat the label-free methods
    usable_without_gsd: bool = False  # also the default where the GSD is unknown (it was validated on such pairs)
    change: str = "any"
    data: str = ""
    recipe: str = ""
    scores: dict = field(default_factory=dict)  # held-out scores, for `cdtool info`

    @classmethod
    def from_card(cls, raw: dict | None, band_count: int | None = None) -> "ModelCard":
        """Read a checkpoint's card (cdtool.io.checkpoint_meta); checkpoints from before cards (None) know
        their band count."""
        if raw is None:
            return cls(band_count=band_count, value_range="not recorded", change="not recorded")
        if not isinstance(raw, dict):
            raise InputError("checkpoint card is not a mapping")
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        known.setdefault("band_count", band_count)
        for key in ("gsd_m", "usable_gsd_m"):
            if known.get(key) is not None:
                try:
                    lo, hi = (float(v) for v in known[key])
                except (TypeError, ValueError):
                    lo = hi = math.nan
                if not 0 < lo <= hi:
                    raise InputError(f"checkpoint card: {key} must be [low, high] with 0 < low <= high, "
                                     f"got {known[key]!r}")
                known[key] = (lo, hi)
        if known.get("band_count") is not None and not (isinstance(known["band_count"], int)
                                                        and 0 < known["band_count"] <= 10_000):
            raise InputError(f"checkpoint card: band_count must be a positive integer, got {known['band_count']!r}")
        if not isinstance(known.get("usable_without_gsd", False), bool):
            raise InputError(f"checkpoint card: usable_without_gsd must be true or false, got "
                             f"{known['usable_without_gsd']!r}")
        return cls(**known)

    def to_meta(self) -> dict:
        return asdict(self)

    def describe(self) -> list[tuple[str, str]]:
        """(field, text) rows for `cdtool info` and `cdtool models`."""
        missing = "any" if self.band_count is None else "not recorded"  # label-free models take any input
        rng = lambda r: missing if r is None else f"{r[0]:g}-{r[1]:g} m"  # noqa: E731
        bands = "any" if self.band_count is None else f"{self.band_count}"
        if self.layout:
            bands += f" ({self.layout}{': ' + ', '.join(self.band_names) if self.band_names else ''})"
        return [("bands", bands), ("values", self.value_range), ("GSD trained", rng(self.gsd_m)),
                ("default for GSD", "never" if self.usable_gsd_m is None else rng(self.usable_gsd_m)
                 + (" and unknown GSD (aerial)" if self.usable_without_gsd else "")), ("change learned", self.change),
                ("data", self.data or "-"), ("recipe", self.recipe or "-")]


@dataclass(frozen=True)
class InputDomain:
    """The pair a user brings, as far as its files tell."""

    band_count: int
    band_names: list[str]
    colors: list[str]
    dtype: str
    gsd: float | None
    gsd_source: str  # "transform", "--gsd" or "unknown"
    panorama: bool = False  # a 360° street-level panorama (--wrap): never an aerial model's domain
    sensors: str | None = None  # why the dates look like images from two sensors (None: nothing says so)

    @property
    def sentinel2_bands(self) -> list[str | None]:
        """The Sentinel-2 band each input band's name gives ("8A" for `…_B8A`), None where it gives none."""
        return [sentinel2_band(n) for n in self.band_names]

    @property
    def layout(self) -> str | None:
        """'rgb' when the bands are (or may be taken as) red, green, blue; 'sentinel2' when the band names hold
        every Sentinel-2 surface band (L1C's 13, or L2A's 12 without B10)."""
        if set(SENTINEL2_SURFACE) <= set(self.sentinel2_bands):
            return "sentinel2"
        if self.band_count == 3:
            if [c.lower() for c in self.colors] == list(RGB):
                return "rgb"
            if all(_visible(n) for n in self.band_names):
                return "rgb"  # three bands with no colour interpretation and no telling names: assumed RGB
        return None


def _visible(name: str) -> bool:
    """False when a band's name says it is not visible light: NIR/SWIR words, a wavelength beyond 0.7 µm,
    or a Sentinel-2 band other than B02-B04."""
    if _NOT_RGB.search(name):
        return False
    w = _WAVELENGTH.search(name)
    if w:
        um = float(w.group(1)) / (1000.0 if w.group(2).lower() == "nm" else 1.0)
        return 0.38 <= um <= 0.72
    s2 = sentinel2_band(name)
    return s2 is None or s2 in ("2", "3", "4")


def sentinel2_band(name: str) -> str | None:
    """The Sentinel-2 band a name mentions ("2" for `…_B02`, "8A" for `B8A`), or None."""
    m = _S2_BAND.search(name)
    return m.group(1).upper().lstrip("0") if m else None


def model_bands(card: ModelCard, domain: InputDomain) -> list[int] | None:
    """1-based positions of the input bands a Sentinel-2 model reads, in the model's order (found by band
    name, so the files' order and extra bands do not matter); None when the model takes the input as it is."""
    if card.layout != "sentinel2" or not card.band_names:
        return None
    have = domain.sentinel2_bands
    wanted = [sentinel2_band(n) or n for n in card.band_names]
    if not set(wanted) <= set(have):
        return None
    picks = [have.index(b) + 1 for b in wanted]
    return None if picks == list(range(1, domain.band_count + 1)) else picks


def mismatches(card: ModelCard, domain: InputDomain) -> list[str]:
    """Every way the input lies outside the card's domain, as short phrases (empty: inside)."""
    out = []
    if card.layout == "sentinel2" and card.band_names:
        missing = [n for n in card.band_names if (sentinel2_band(n) or n) not in domain.sentinel2_bands]
        if missing:
            out.append(f"input lacks Sentinel-2 band(s) {', '.join(missing)} (band names tell which is which)")
    elif card.band_count is not None and card.band_count != domain.band_count:
        out.append(f"input has {domain.band_count} bands, the model was trained on {card.band_count}")
    elif card.layout is not None and domain.layout != card.layout:
        out.append(f"input bands are not {card.layout} ({', '.join(domain.band_names[:4])})")
    if card.usable_gsd_m is not None and domain.gsd is not None:
        lo, hi = card.usable_gsd_m
        if not lo <= domain.gsd <= hi:
            out.append(f"input GSD {domain.gsd:.3g} m lies outside the model's {lo:g}-{hi:g} m")
    return out


def scale_factor(card: ModelCard, gsd: float | None) -> float:
    """How much to enlarge windows so the input reaches the GSDs the model was trained on: 1 when the input's
    GSD is unknown or already inside the trained range, else input GSD / nearest trained GSD, at most
    MAX_RESAMPLE either way."""
    if card.gsd_m is None or gsd is None:
        return 1.0
    lo, hi = card.gsd_m
    target = min(max(gsd, lo), hi)
    factor = gsd / target
    return float(min(max(factor, 1 / MAX_RESAMPLE), MAX_RESAMPLE)) if abs(math.log(factor)) > 0.05 else 1.0
