"""Terminal tables built from data: the rows are returned first, rendering is a second step."""
from __future__ import annotations

from datetime import datetime, timezone

from imgpipe.cli import printable
from imgpipe.document import FIELDS
from imgpipe.errors import UserError
from visualize.mapreduce_output import dimensions, ordered

MAX_DAYS = 31
RECENT_COLUMNS = ["file_name", "size_kb", "width×height", "format", "faces", "timestamp (UTC)"]
SUMMARY_HEADERS = ["value", "images", "total KiB", "min KiB", "max KiB", "mean KiB"]


def parse_sort(text: str, allowed=FIELDS) -> tuple[str, bool]:
    """`field[:asc|desc]` -> (field, ascending)."""
    field, _, direction = text.strip().partition(":")
    direction = direction.lower() or "asc"
    if field not in allowed:
        raise UserError(f"cannot sort by {field!r}: choose one of {', '.join(allowed)}")
    if direction not in ("asc", "desc"):
        raise UserError(f"sort direction must be asc or desc, got {direction!r} in {text!r}")
    return field, direction == "asc"


def utc_time(seconds) -> str:
    try:
        return datetime.fromtimestamp(float(seconds), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _int_text(value) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return ""


def image_rows(frame) -> list[list]:
    """One display row per document: RECENT_COLUMNS."""
    rows = []
    for doc in frame.to_dict("records"):
        width, height = _int_text(doc.get("width")), _int_text(doc.get("height"))
        size = doc.get("size_kb")
        # Keys can hold anything, escape sequences and newlines included: they are shown escaped.
        rows.append([printable(doc.get("file_name") or doc.get("key") or doc.get("id") or ""),
                     size if size == size else None,  # NaN -> empty cell
                     f"{width}×{height}" if width and height else "",
                     printable(doc.get("format") or ""), _int_text(doc.get("faces")), utc_time(doc.get("timestamp"))])
    return rows


def recent_images(frame, limit: int = 10, sort: str = "timestamp:desc"):
    """The first `limit` documents by `sort` (documents missing the field last)."""
    field, ascending = parse_sort(sort, allowed=list(frame.columns))
    return frame.sort_values(field, ascending=ascending, na_position="last", kind="stable").head(limit)


def render(rows, headers, tablefmt: str = "simple") -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt=tablefmt, floatfmt=",.1f", intfmt=",")


def summary_tables(frame, tablefmt: str = "simple") -> list[tuple[str, str]]:
    """(dimension, rendered table) for each dimension of a MapReduce summary, in display order."""
    tables = []
    for dimension in dimensions(frame):
        rows = ordered(frame[frame["dimension"] == dimension])
        if dimension == "day" and len(rows) > MAX_DAYS:
            # Day by day grows without bound; the latest month is what a terminal can show.
            dimension = f"day (latest {MAX_DAYS} of {len(rows)})"
            rows = rows.tail(MAX_DAYS)
        body = [[r["value"], int(r["count"]), r["total_kb"], r["min_kb"], r["max_kb"], r["mean_kb"]]
                for r in rows.to_dict("records")]
        tables.append((dimension, render(body, SUMMARY_HEADERS, tablefmt)))
    return tables


def human_size(kib: float) -> str:
    for unit, scale in (("GiB", 1024.0 ** 2), ("MiB", 1024.0)):
        if kib >= scale:
            return f"{kib / scale:,.1f} {unit}"
    return f"{kib:,.1f} KiB"


def totals(aggregates, dead_lettered: int | None = None) -> list[tuple[str, str]]:
    """The totals block of visualize.aggregates.Aggregates: (label, value) rows. Sizes are exact
    when the counts carry a total (documents, MapReduce output), else the bounds the size bins
    give; dead-lettered appears only when it is known."""
    rows = [("images", f"{aggregates.images:,}")]
    if aggregates.size_total_kb is not None:
        rows.append(("total size", human_size(aggregates.size_total_kb)))
        if aggregates.size_total_images:
            rows.append(("mean size", human_size(aggregates.size_total_kb / aggregates.size_total_images)))
    elif aggregates.sized:
        low, high = aggregates.size_bounds_kb
        rows.append(("total size", f"{human_size(low)} to {human_size(high)} (bounds from the size bins)"))
        rows.append(("mean size", f"{human_size(low / aggregates.sized)} to {human_size(high / aggregates.sized)}"))
    else:
        rows.append(("total size", human_size(0.0)))
    if aggregates.formats:
        rows.append(("formats", ", ".join(f"{k} {v:,}" for k, v in aggregates.formats.items())))
    if aggregates.faces_counted:
        rows.append(("images with faces", f"{aggregates.with_faces:,}"))
    if aggregates.modified:
        rows.append(("modified (UTC)", f"{utc_time(aggregates.modified[0])} .. {utc_time(aggregates.modified[1])}"))
    if dead_lettered is not None:
        rows.append(("dead-lettered", f"{dead_lettered:,}"))
    return rows
