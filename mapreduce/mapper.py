#!/usr/bin/env python3
"""Hadoop-streaming mapper: image metadata CSV rows in, partial summaries out.

Standalone on purpose: EMR nodes have nothing of ours installed, so this file uses the
standard library only and stays Python 3.9-compatible. It runs the same under
`cat CSV | mapper.py | LC_ALL=C sort | reducer.py`, local Hadoop and an EMR step.

Output, one line per group (tab-separated, key = the first two fields):

    dimension  value  count  total_kb  min_kb  max_kb

Sizes are KiB with exactly two decimals. The mapper sums rows of the same group before
writing (an in-mapper combiner), so its output is already in the reducer's partial format
and a 1,000,000-row split becomes a few hundred lines to sort instead of 5,000,000.

Counters go to stderr as `reporter:counter:imgpipe,<name>,<n>`; only stdout carries data.
"""
import csv
import io
import re
import sys
from datetime import datetime, timedelta

# The CSV columns of mapreduce/export_csv.py (imgpipe.document.FIELDS, in order). Hadoop hands
# the header only to the mapper of the first split, so every other split maps by this order.
# tests/test_mapreduce_mapper.py fails if it drifts from FIELDS.
DEFAULT_COLUMNS = (
    "id", "bucket", "key", "file_name", "format", "size_bytes", "size_kb", "width", "height",
    "channels", "bit_depth", "megapixels", "mean_brightness", "sharpness", "edge_density",
    "dominant_color", "faces", "phash", "sha256", "thumbnail_key", "grayscale_key", "etag",
    "timestamp", "last_modified", "event_time", "processed_at", "processing_ms", "pipeline_version",
    "size_bin_kb", "processed_hour", "text_chars",
)
REQUIRED_COLUMNS = ("format", "size_kb", "faces", "processed_at")

DIMENSIONS = ("format", "hour", "day", "size_bucket", "faces")
# (upper bound in hundredths of a KiB, label); the last bucket has no upper bound.
SIZE_BUCKETS = ((50 * 100, "<50KB"), (200 * 100, "50-200KB"), (1000 * 100, "200-1000KB"),
                (None, ">=1000KB"))

COUNTER_GROUP = "imgpipe"
# Flush the in-mapper sums when this many groups are held, so memory stays bounded even if a
# column (say, format) holds garbage with a new value on every row.
MAX_HELD_GROUPS = 10000

# The common case, UTC with a Z (what the consumer writes), without building a datetime.
_ISO_UTC = re.compile(r"(\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01]))T([01]\d|2[0-3]):[0-5]\d"
                      r"(?::[0-5]\d(?:\.\d+)?)?(?:Z|[+-]00:?00)?$", re.ASCII)
_ISO_ANY = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$",
                      re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MalformedRow(ValueError):
    """A data row that cannot be summarised; `reason` becomes a counter name."""

    def __init__(self, reason):
        ValueError.__init__(self, reason)
        self.reason = reason


class _OneLine:
    """Feeds a csv.reader one line at a time, so the reader (and its parsing state) is built once."""

    def __init__(self):
        self.line = None

    def __iter__(self):
        return self

    def __next__(self):
        line, self.line = self.line, None
        if line is None:
            raise StopIteration
        return line


_FEED = _OneLine()
_READER = csv.reader(_FEED, strict=True)


def parse_line(line):
    """One physical line -> its CSV fields. Each line is parsed alone, so a stray quote
    cannot swallow the rows after it: a quoted field left open ends the data, which the
    strict reader reports as an error."""
    line = line.rstrip("\r\n")
    if '"' not in line:
        return line.split(",")
    _FEED.line = line
    try:
        return next(_READER)
    except (csv.Error, StopIteration):
        raise MalformedRow("bad_quoting") from None


def is_header(fields):
    """A row naming the columns: it holds "id" and every column the mapper reads, in any order."""
    return DEFAULT_COLUMNS[0] in fields and all(name in fields for name in REQUIRED_COLUMNS)


def column_positions(columns):
    """Column name -> position, for the columns the mapper reads."""
    return {name: columns.index(name) for name in REQUIRED_COLUMNS}, len(columns)


DEFAULT_POSITIONS = column_positions(DEFAULT_COLUMNS)


def size_hundredths(text):
    """'12.34' KiB -> 1234: whole hundredths keep sums exact, so no split or order of the
    input can change a total in its last digit."""
    try:
        value = float(text)
    except ValueError:
        raise MalformedRow("bad_size_kb") from None
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        raise MalformedRow("bad_size_kb")
    return int(round(value * 100))


def day_and_hour(text):
    """'2026-11-25T16:40:31.123Z' -> ('2026-11-25', '16'), in UTC. No zone means UTC."""
    match = _ISO_UTC.match(text)
    # Days 29-31 exist only in some months: those few dates take the slow, checked path.
    if match and match.group(1)[8:] <= "28":
        return match.group(1), match.group(2)
    # Parsed by hand rather than by datetime.fromisoformat, which accepts different
    # strings on Python 3.9 (EMR) and 3.11.
    match = _ISO_ANY.match(text)
    if not match:
        raise MalformedRow("bad_processed_at")
    year, month, day, hour, minute, second, zone = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    except ValueError:
        raise MalformedRow("bad_processed_at") from None
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        moment -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return moment.strftime("%Y-%m-%d"), moment.strftime("%H")


def size_bucket(hundredths):
    for upper, label in SIZE_BUCKETS:
        if upper is None or hundredths < upper:
            return label
    raise AssertionError("the last bucket has no upper bound")


def clean_value(text):
    """A group value must not contain the tab or newline that frame the output."""
    text = _CONTROL.sub(" ", text).strip()
    return text or "unknown"


def group_values(fields, positions=None):
    """One CSV row (a list of fields) -> ((format, hour, day, size_bucket, faces), size in
    hundredths of KiB): the row's value in each of DIMENSIONS. Raises MalformedRow.

    `positions` is what `column_positions` returns for the header in force; by default
    the columns are in DEFAULT_COLUMNS order.
    """
    where, width = positions or DEFAULT_POSITIONS
    if len(fields) != width:
        raise MalformedRow("wrong_field_count")
    size = size_hundredths(fields[where["size_kb"]])
    day, hour = day_and_hour(fields[where["processed_at"]].strip())
    faces_text = fields[where["faces"]].strip()
    if not (faces_text.isascii() and faces_text.isdigit()):
        raise MalformedRow("bad_faces")
    return (clean_value(fields[where["format"]].lower()), hour, day, size_bucket(size),
            str(int(faces_text))), size


def map_record(fields, positions=None):
    """One CSV row -> [(dimension, value, size in hundredths of KiB)], one per dimension."""
    values, size = group_values(fields, positions)
    return [(dimension, value, size) for dimension, value in zip(DIMENSIONS, values)]


def add_partial(held, key, count, total, low, high):
    """Fold one partial (count, total, min, max) into the sums held per key."""
    seen = held.get(key)
    if seen is None:
        held[key] = [count, total, low, high]
    else:
        seen[0] += count
        seen[1] += total
        if low < seen[2]:
            seen[2] = low
        if high > seen[3]:
            seen[3] = high


def kib(hundredths):
    """Exact two-decimal text of a whole number of hundredths: 1234 -> '12.34'."""
    return "%d.%02d" % divmod(hundredths, 100)


def format_partial(key, sums):
    dimension, value = key
    count, total, low, high = sums
    return "%s\t%s\t%d\t%s\t%s\t%s\n" % (dimension, value, count, kib(total), kib(low), kib(high))


def partial_lines(held):
    """Sums per combination of values -> sorted partial lines per (dimension, value)."""
    per_group = {}
    for values, (count, total, low, high) in held.items():
        for dimension, value in zip(DIMENSIONS, values):
            add_partial(per_group, (dimension, value), count, total, low, high)
    return [format_partial(key, per_group[key]) for key in sorted(per_group)]


def map_lines(lines, counters):
    """Map CSV lines to partial-summary lines, counting header, good and malformed rows."""
    # Sums are held per combination of the five values rather than per dimension: one dict
    # update per row instead of five, and the split into dimensions happens once at the end.
    held = {}
    positions = DEFAULT_POSITIONS
    rows = 0
    for line in lines:
        if not line.strip():
            counters["blank_lines"] = counters.get("blank_lines", 0) + 1
            continue
        try:
            fields = parse_line(line)
            if is_header(fields):
                # A header names the columns for the rows after it (a concatenation of two
                # exports may carry two headers).
                positions = column_positions(fields)
                counters["header_rows"] = counters.get("header_rows", 0) + 1
                continue
            values, size = group_values(fields, positions)
        except MalformedRow as bad:
            name = "malformed_" + bad.reason
            counters[name] = counters.get(name, 0) + 1
            counters["malformed_rows"] = counters.get("malformed_rows", 0) + 1
            continue
        rows += 1
        seen = held.get(values)
        if seen is None:
            held[values] = [1, size, size, size]
            if len(held) >= MAX_HELD_GROUPS:
                for text in partial_lines(held):
                    yield text
                held.clear()
        else:
            seen[0] += 1
            seen[1] += size
            if size < seen[2]:
                seen[2] = size
            elif size > seen[3]:
                seen[3] = size
    if rows:
        counters["rows"] = counters.get("rows", 0) + rows
    for text in partial_lines(held):
        yield text


def report_counters(counters, stderr):
    for name in sorted(counters):
        stderr.write("reporter:counter:%s,%s,%d\n" % (COUNTER_GROUP, name, counters[name]))
    stderr.flush()


def utf8_lines(binary):
    """Lines of a byte stream split on LF only, decoded as UTF-8 (bad bytes replaced):
    Hadoop passes bytes through, and the node's locale may not be UTF-8."""
    for raw in binary:
        yield raw.decode("utf-8", "replace")


def main(stdin=None, stdout=None, stderr=None):
    lines = stdin if stdin is not None else utf8_lines(sys.stdin.buffer)
    out = stdout if stdout is not None else io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8",
                                                             newline="\n")
    err = stderr if stderr is not None else sys.stderr
    counters = {}
    for text in map_lines(lines, counters):
        out.write(text)
    out.flush()
    report_counters(counters, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
