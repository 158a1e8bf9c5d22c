"""Street-level pairs in `detect`: recognising them, the method they get by default, and what alignment found.

Aerial defaults assume pixels of both dates see the same ground. Street photos and panoramas are taken from
a slightly different spot each time, so parallax and residual misregistration remain after any global
alignment, and lighting differs from facade to facade. A pair is street-level when it says so (`--scene
street`) or when it is a panorama without a CRS (`--wrap` on PNG/JPG); the default method for it is the one
that did best on street pairs (README "Street-level pairs", benchmarks/street_table.py).
"""

from __future__ import annotations

from cdtool.domain import InputDomain
from cdtool.errors import InputError, OptionError
from cdtool.inference.detector import Choice, load_detector

SCENES = ("auto", "street")
# The street default, chosen on benchmarks/street_table.py (README "Street-level pairs").
STREET_DEFAULT = "irmad_local"
STREET_EVIDENCE = ("the best F1 on street-level pairs: 0.80 on 12 synthetic street pairs aligned with --align and 0.58 "
                   "on the real TSUNAMI pair, against cva's 0.66 and 0.32 (README 'Street-level pairs')")


def check_scene(scene: str | None) -> None:
    if scene is not None and scene not in SCENES:
        raise OptionError("scene", f"must be one of {', '.join(SCENES)}, got {scene!r}")


def is_street(scene: str | None, georeferenced: bool, wrap: bool) -> bool:
    """Whether a pair is street-level: said with --scene street, or a panorama (--wrap) without a CRS."""
    return scene == "street" or (scene in (None, "auto") and wrap and not georeferenced)


def street_choice(domain: InputDomain, scene: str | None) -> Choice:
    """The default detector of a street-level pair, and the one line that says why."""
    det = load_detector(STREET_DEFAULT)
    how = "--scene street" if scene == "street" else "a 360° panorama without a CRS (--wrap)"
    reason = (f"{det.name} (label-free, street-level pair: {how}): {STREET_EVIDENCE}; input {domain.band_count} "
              "bands")
    return Choice(det, reason, [], 1.0)


def alignment_record(pair) -> dict | None:
    """What `--align` found for a pair aligned by its content (None for any other pair): for detect.json."""
    found = getattr(pair.after, "alignment", None)
    return found.record() | {"line": found.line()} if found is not None else None
