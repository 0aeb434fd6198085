"""The MapReduce summary: `part-*` files of tab-separated lines

    dimension  value  count  total_kb  min_kb  max_kb  mean_kb

read into one DataFrame. Labels are opaque (a size bucket may be `<50KB` or `50-200KB`);
only their order is guessed, for display.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

COLUMNS = ["dimension", "value", "count", "total_kb", "min_kb", "max_kb", "mean_kb"]
# Display order of the dimensions the mapper emits; any other dimension follows, by name.
DIMENSION_ORDER = ["format", "size_bucket", "faces", "hour", "day"]


@dataclass(frozen=True)
class Summary:
    frame: object  # pandas.DataFrame with COLUMNS
    source: Path | None
    skipped_lines: int = 0


def find_output(path: Path) -> Path | None:
    """The directory holding the latest `part-*` files: `path` itself when it has them, else
    the sub-directory (any depth) whose part files were written last. None when there are none."""
    if not path.is_dir():
        return None
    newest: dict[Path, float] = {}
    for part in path.rglob("part-*"):
        if part.is_file() and not part.name.endswith(".crc"):
            newest[part.parent] = max(newest.get(part.parent, 0.0), part.stat().st_mtime)
    if not newest:
        return None
    if path in newest:
        return path
    return max(newest, key=newest.get)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_lines(lines: Iterable[str]) -> tuple[list[dict], int]:
    """(rows, skipped): one row per well-formed line; blank lines are ignored, bad ones counted."""
    rows, skipped = [], 0
    for line in lines:
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        cells = line.split("\t")
        count = _number(cells[2]) if len(cells) >= 3 else None
        if count is None or not cells[0].strip():
            skipped += 1
            continue
        row = {"dimension": cells[0].strip(), "value": cells[1].strip(), "count": int(count)}
        for name, cell in zip(COLUMNS[3:], cells[3:]):
            row[name] = _number(cell)
        rows.append(row)
    return rows, skipped


def combine(rows: list[dict]):
    """Rows as a DataFrame, one per (dimension, value) in first-seen order; a pair repeated
    across part files (several reducers, or a re-run appended) is merged, not double-listed."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=COLUMNS)
    if frame.empty:
        return frame
    for name in COLUMNS[2:]:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    merged = (frame.groupby(["dimension", "value"], sort=False, dropna=False)
              .agg(count=("count", "sum"), total_kb=("total_kb", "sum"), min_kb=("min_kb", "min"),
                   max_kb=("max_kb", "max"), mean_kb=("mean_kb", "mean"), n=("count", "size"))
              .reset_index())
    # The mean of merged rows is their total over their count, not the mean of their means.
    repeated = merged["n"] > 1
    merged.loc[repeated, "mean_kb"] = merged.loc[repeated, "total_kb"] / merged.loc[repeated, "count"]
    merged["count"] = merged["count"].astype(int)
    return merged[COLUMNS]


def read_summary(path: Path) -> Summary | None:
    """The latest summary under `path`, or None when there is no MapReduce output there."""
    source = find_output(path)
    if source is None:
        return None
    rows, skipped = [], 0
    for part in sorted(p for p in source.glob("part-*") if p.is_file() and not p.name.endswith(".crc")):
        with part.open(encoding="utf-8", errors="replace") as lines:
            got, bad = parse_lines(lines)
        rows.extend(got)
        skipped += bad
    if skipped:
        log.warning("skipped %d malformed line(s) in %s", skipped, source)
    return Summary(frame=combine(rows), source=source, skipped_lines=skipped)


_SIZE_UNITS = {"": 1.0, "b": 1 / 1024, "k": 1.0, "kb": 1.0, "kib": 1.0, "m": 1024.0, "mb": 1024.0,
               "mib": 1024.0, "g": 1024.0 ** 2, "gb": 1024.0 ** 2, "gib": 1024.0 ** 2}
_FIRST_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")


def _label_key(label: str) -> tuple[float, int] | None:
    """Sort key of a range label: `<50KB` < `50-200KB` < `200-1000KB` < `>1000KB` < `1MB+`."""
    found = _FIRST_NUMBER.search(label)
    if not found:
        return None
    unit = found.group(2).lower()
    if not unit:  # "50-200KB": the unit follows the second number
        later = re.search(r"\d\s*([a-zA-Z]+)", label[found.end():])
        unit = later.group(1).lower() if later else ""
    if unit not in _SIZE_UNITS:
        unit = ""
    stripped = label.strip()
    rank = 0 if stripped.startswith(("<", "≤")) else 2 if stripped.startswith((">", "≥")) else 1
    return float(found.group(1)) * _SIZE_UNITS[unit], rank


def ordered(dimension_rows):
    """One dimension's rows in display order: numbers numerically (hour, faces), dates by
    date, range labels by their bounds (size buckets), other categories by count, largest first."""
    values = [str(v) for v in dimension_rows["value"]]
    numbers = [_number(v) for v in values]
    labels = [_label_key(v) for v in values]
    counts = list(dimension_rows["count"])
    if all(n is not None for n in numbers):
        key = numbers.__getitem__
    elif all(re.fullmatch(r"\d{4}-\d{2}(-\d{2})?.*", v) for v in values):
        key = values.__getitem__
    elif all(k is not None for k in labels):
        key = labels.__getitem__
    else:
        key = lambda i: -counts[i]  # noqa: E731
    return dimension_rows.iloc[sorted(range(len(values)), key=key)]


def dimensions(frame) -> list[str]:
    present = list(dict.fromkeys(frame["dimension"]))
    return [d for d in DIMENSION_ORDER if d in present] + sorted(d for d in present if d not in DIMENSION_ORDER)
