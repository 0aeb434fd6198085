"""Visualize's documents as a DataFrame: from the index (read by imgpipe.meili.DocumentReader,
with the search-only key) or from an exported CSV, with the same columns and types either way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from imgpipe.document import EXPORT_COLUMNS as FIELDS  # the core fields and the enrichment ones (may be empty)
from imgpipe.errors import UserError

NUMERIC_FIELDS = ("size_bytes", "size_kb", "width", "height", "channels", "bit_depth", "megapixels",
                  "mean_brightness", "sharpness", "edge_density", "faces", "timestamp", "processing_ms",
                  "size_bin_kb", "processed_hour")


def to_frame(docs: Iterable[dict]):
    """Documents as a DataFrame with every FIELDS column present and numeric columns numeric."""
    import pandas as pd

    frame = pd.DataFrame.from_records(list(docs))
    for name in FIELDS:
        if name not in frame.columns:
            frame[name] = None
    for name in NUMERIC_FIELDS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    ordered = list(FIELDS) + [c for c in frame.columns if c not in FIELDS]
    return frame[ordered]


def read_csv(path: Path):
    """An exported CSV (columns named as FIELDS) as the same DataFrame `to_frame` builds."""
    import pandas as pd

    try:
        # Everything as text first: phash and sha256 are hex strings that could look numeric.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"CSV file not found: {path}") from None
    except pd.errors.EmptyDataError:
        raw = pd.DataFrame(columns=list(FIELDS))
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} as CSV: {str(exc).strip()}") from None
    if "file_name" not in raw.columns and "id" not in raw.columns:
        raise UserError(f"{path} has no file_name or id column; expected the columns of imgpipe.document.FIELDS")
    return to_frame({k: (v if v != "" else None) for k, v in row.items()} for row in raw.to_dict("records"))
