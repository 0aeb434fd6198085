"""What the Hadoop-streaming scripts share (mapper.py, reducer.py, duplicates_*.py): the export's
columns, the one-line CSV reader, counters on stderr, UTF-8 stdin and stdout, the pHash bands.

Standard library only and Python 3.7-compatible, like the scripts: EMR nodes have nothing of
ours installed, and EMR 6.x runs Python 3.7 (the oldest Python the scripts meet; EMR 7 has 3.9).
It travels beside the scripts as one more `-files` entry (mapreduce/runners/common.py). A
script imports it as a top-level module when run as a file, but the streaming task runs a
symlink to the script, which Python resolves to wherever the file was localized, alone: so the
runners also pass `-cmdenv PYTHONPATH=.`, the task's working directory, which holds a link to
every `-files` entry. The pipe runner runs each stage the same way (runners/pipe.py).
"""
import csv
import io
import sys

COUNTER_GROUP = "imgpipe"

# The CSV columns of mapreduce/export_csv.py (imgpipe.document.FIELDS, in order). Hadoop hands
# the header only to the mapper of the first split, so every other split maps by this order.
# tests/test_mapreduce_mapper.py fails if it drifts from FIELDS.
EXPORT_COLUMNS = (
    "id", "bucket", "key", "file_name", "format", "size_bytes", "size_kb", "width", "height",
    "channels", "bit_depth", "megapixels", "mean_brightness", "sharpness", "edge_density",
    "dominant_color", "faces", "phash", "sha256", "thumbnail_key", "grayscale_key", "etag",
    "timestamp", "last_modified", "event_time", "processed_at", "processing_ms", "pipeline_version",
    "size_bin_kb", "processed_hour", "frames", "text_chars",
)

# The duplicates job's pHash bands: both of its scripts must cut the hash the same way.
HASH_BITS = 64
# Chosen by measurement (bench/duplicates_threshold.py; numbers in mapreduce/README.md).
DEFAULT_THRESHOLD = 8
MAX_THRESHOLD = 31  # bands of at least two bits
EXACT_KEY = "sha256"  # the duplicates mapper's key of exact copies


class MalformedRow(ValueError):
    """A data row a job cannot use; `reason` becomes a counter name (malformed_<reason>)."""

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


def parse_csv_line(line):
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


def is_header(fields, required):
    """A row naming the columns: it holds "id" and every `required` column, in any order."""
    return EXPORT_COLUMNS[0] in fields and all(name in fields for name in required)


def column_positions(columns, required, optional=()):
    """(column name -> position for the `required` columns and those of the `optional` ones the
    header has, number of columns)."""
    where = {name: columns.index(name) for name in required}
    where.update({name: columns.index(name) for name in optional if name in columns})
    return where, len(columns)


def read_rows(lines, required, read_row, counters, optional=()):
    """What `read_row(fields, positions)` makes of each data row of CSV lines, in order. Blank
    lines and headers are counted and passed over: a header names the columns for the rows after
    it (by default EXPORT_COLUMNS; a concatenation of two exports may carry two headers). A row
    the CSV reader or `read_row` refuses (MalformedRow) is counted under its reason."""
    parse, header = parse_csv_line, is_header  # local names: looked up once, not once per row
    positions = column_positions(EXPORT_COLUMNS, required, optional)
    for line in lines:
        if not line.strip():
            count(counters, "blank_lines")
            continue
        try:
            fields = parse(line)
            if header(fields, required):
                positions = column_positions(fields, required, optional)
                count(counters, "header_rows")
                continue
            row = read_row(fields, positions)
        except MalformedRow as bad:
            count_malformed(counters, bad)
            continue
        yield row


def count(counters, name, n=1):
    counters[name] = counters.get(name, 0) + n


def count_malformed(counters, bad):
    """A MalformedRow counted under its reason and in the total."""
    count(counters, "malformed_" + bad.reason)
    count(counters, "malformed_rows")


def report_counters(counters, stderr):
    """Hadoop streaming's counter protocol: `reporter:counter:<group>,<name>,<n>` on stderr."""
    for name in sorted(counters):
        stderr.write("reporter:counter:%s,%s,%d\n" % (COUNTER_GROUP, name, counters[name]))
    stderr.flush()


def utf8_lines(binary):
    """Lines of a byte stream split on LF only, decoded as UTF-8 (bad bytes replaced):
    Hadoop passes bytes through, and the node's locale may not be UTF-8."""
    for raw in binary:
        yield raw.decode("utf-8", "replace")


def stdin_text():
    """stdin as UTF-8 text split on LF only, bad bytes replaced (whatever the node's locale)."""
    return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")


def write_output(texts, counters, stdout=None, stderr=None):
    """Write every line of `texts` to stdout (UTF-8, LF), then the counters they left to
    stderr; exit status 0. Only stdout carries data."""
    out = stdout if stdout is not None else io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
    for text in texts:
        out.write(text)
    out.flush()
    report_counters(counters, stderr if stderr is not None else sys.stderr)
    return 0


def bands(threshold):
    """(shift, width) of each of the threshold + 1 bands of the pHash, from the most significant
    bit: the first 64 % (T+1) bands are one bit wider than the others."""
    number = threshold + 1
    result = []
    end = HASH_BITS
    for index in range(number):
        width = HASH_BITS // number + (1 if index < HASH_BITS % number else 0)
        end -= width
        result.append((end, width))
    return result


def kib(hundredths):
    """Exact two-decimal text of a whole number of hundredths: 1234 -> '12.34'."""
    return "%d.%02d" % divmod(hundredths, 100)
