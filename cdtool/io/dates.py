"""When an image was taken, as far as its file says: a metadata tag that names the acquisition, else a date
in the file's name (Sentinel-2, Landsat and most archives put one there), else unknown. Never the file's
modification time or TIFF's DATETIME, which say when it was written, not when it was imaged."""

from __future__ import annotations

import re

# 2016-07-06, 20160706 or 20160706T155721, not inside a longer run of digits
_DATE = re.compile(r"(?<!\d)((?:19|20)\d\d)[-_]?(0[1-9]|1[0-2])[-_]?(0[1-9]|[12]\d|3[01])(?!\d)")
_TAGS = ("ACQUISITIONDATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED", "SENSING_TIME", "SENSING_DATE",
         "PRODUCT_START_TIME", "DATATAKE_SENSING_START")


def date_in(text: str) -> str | None:
    """The first plausible calendar date in `text` as YYYY-MM-DD, or None."""
    m = _DATE.search(text)
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else None


def acquisition_date(ds, name: str) -> str | None:
    """YYYY-MM-DD of an open raster `ds` given as `name`: its acquisition tag, else a date in its name, its
    band descriptions (a band folder's file names) or its files; None when nothing says."""
    try:
        tags = {k.upper(): v for k, v in ds.tags().items()}
    except Exception:  # a dataset kind without tags (a warped view)
        tags = {}
    for key in _TAGS:
        found = date_in(tags.get(key, ""))
        if found:
            return found
    texts = [name]
    try:
        texts += [d or "" for d in ds.descriptions] + list(ds.files)
    except Exception:  # a dataset kind without them
        pass
    for text in texts:
        found = date_in(str(text).rsplit("/", 1)[-1])
        if found:
            return found
    return None
