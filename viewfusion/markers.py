"""The chunk markers of `viewfusion sample` (docs/FORMATS.md, Samples), as metrics and figures read
them: which files in `chunks/` are markers, and the sampler name the tables and figures use."""

from __future__ import annotations

import re

CHUNK_MARKER = re.compile(r"^\d+-of-\d+\.json$")  # chunks/ also holds the sampler's own progress files


def sampler_name(marker: dict) -> str | None:
    """The marker's sampler: "ddim", or "ddim-eta1" when eta > 0, so that DDIM runs that differ
    only in eta stay apart in every table and figure."""
    name, eta = marker.get("sampler"), marker.get("eta") or 0
    return f"{name}-eta{eta:g}" if name == "ddim" and eta else name
