"""When an image was taken, as far as its files say: a `dates.txt` beside it (OSCD's `date_1: 20150704` for
`imgs_1`, or `name: date` lines), else a metadata tag that names the acquisition, else a date in its name
(most archives put one there), else unknown. Never a file's modification time or TIFF's DATETIME, nor the
processing date that Sentinel-2's older `_OPER_` tile names carry: they say when a file was made, not when the
ground was imaged."""

from __future__ import annotations

import re
from pathlib import Path

# 2016-07-06, 20160706 or 20160706T155721, not inside a longer run of digits
_DATE = re.compile(r"(?<!\d)((?:19|20)\d\d)[-_]?(0[1-9]|1[0-2])[-_]?(0[1-9]|[12]\d|3[01])(?!\d)")
_TAGS = ("ACQUISITIONDATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED", "SENSING_TIME", "SENSING_DATE",
         "PRODUCT_START_TIME", "DATATAKE_SENSING_START")
_NUMBERED = re.compile(r"[_-](\d+)$")  # imgs_1, t-2: the k of dates.txt's date_k


def date_in(text: str) -> str | None:
    """The first plausible calendar date in `text` as YYYY-MM-DD, or None."""
    m = _DATE.search(text)
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else None


def date_in_name(name: str) -> str | None:
    """The acquisition date a file or folder name gives, or None (see the module docstring)."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return None if "_OPER_" in name else date_in(name)


def date_from_dates_txt(source: str) -> str | None:
    """The date `dates.txt` in the input's folder gives it: a line `<name>: date` or `<stem>: date`, or
    `date_<k>: date` for an input named `…_<k>`."""
    path = Path(source)
    table = path.parent / "dates.txt"
    try:
        lines = table.read_text(errors="replace").splitlines()[:1000] if table.is_file() else []
    except OSError:
        return None
    numbered = _NUMBERED.search(path.stem)
    keys = {path.name.lower(), path.stem.lower()} | ({f"date_{numbered.group(1)}"} if numbered else set())
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in keys:
            return date_in(value)
    return None


def acquisition_date(ds, source: str) -> str | None:
    """YYYY-MM-DD of an open raster `ds` given as `source`: from dates.txt, its acquisition tag, its name, its
    band descriptions (a band folder's file names) or its files; None when nothing says."""
    found = date_from_dates_txt(source)
    if found:
        return found
    try:
        tags = {k.upper(): v for k, v in ds.tags().items()}
    except Exception:  # a dataset kind without tags
        tags = {}
    for key in _TAGS:
        found = date_in(tags.get(key, ""))
        if found:
            return found
    names = [source]
    try:
        names += [d or "" for d in ds.descriptions] + list(ds.files)
    except Exception:  # a dataset kind without them
        pass
    for name in names:
        found = date_in_name(str(name))
        if found:
            return found
    return None
