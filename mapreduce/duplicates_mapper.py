#!/usr/bin/env python3
"""Hadoop-streaming mapper of the duplicates job, stage 1: CSV rows in, candidate keys out.

    duplicates_mapper.py [--threshold T]

Standalone like mapper.py (EMR nodes have nothing of ours installed): standard library only,
and Python 3.7-compatible so it also runs on EMR 6.x nodes.

For each good row, one line for its sha256 and one line per band of its pHash, tab-separated,
key = the first two fields:

    sha256  <sha256 hex>        <id>
    band<k> <band k's bits, hex> <id>  <phash>        k = 0 .. T

The 64 bits of the pHash are cut into T+1 bands of contiguous bits. Two hashes at most T bits
apart differ in at most T bands, so they agree exactly on at least one of the T+1 (pigeonhole),
and meet under that band's key. duplicates_reducer.py compares the hashes under each key.

Counters go to stderr as `reporter:counter:imgpipe,<name>,<n>`; only stdout carries data.
"""
import csv
import io
import re
import sys

# The CSV columns of mapreduce/export_csv.py (imgpipe.document.FIELDS, in order), as in
# mapper.py: Hadoop hands the header only to the mapper of the first split.
DEFAULT_COLUMNS = (
    "id", "bucket", "key", "file_name", "format", "size_bytes", "size_kb", "width", "height",
    "channels", "bit_depth", "megapixels", "mean_brightness", "sharpness", "edge_density",
    "dominant_color", "faces", "phash", "sha256", "thumbnail_key", "grayscale_key", "etag",
    "timestamp", "last_modified", "event_time", "processed_at", "processing_ms", "pipeline_version",
    "size_bin_kb", "processed_hour", "text_chars",
)
REQUIRED_COLUMNS = ("id", "phash", "sha256")

HASH_BITS = 64
# Chosen by measurement (bench/duplicates_threshold.py; numbers in mapreduce/README.md).
DEFAULT_THRESHOLD = 8
MAX_THRESHOLD = 31  # bands of at least two bits
COUNTER_GROUP = "imgpipe"
EXACT_KEY = "sha256"

# MeiliSearch's rule for document ids; it also keeps the tab and comma framing of the output safe.
_ID = re.compile(r"[A-Za-z0-9_-]{1,511}$", re.ASCII)
_PHASH = re.compile(r"[0-9a-fA-F]{16}$", re.ASCII)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}$", re.ASCII)


class MalformedRow(ValueError):
    """A data row the job cannot use; `reason` becomes a counter name."""

    def __init__(self, reason):
        ValueError.__init__(self, reason)
        self.reason = reason


def bands(threshold):
    """(shift, width) of each of the threshold + 1 bands, from the most significant bit: the
    first 64 % (T+1) bands are one bit wider than the others."""
    count = threshold + 1
    result = []
    end = HASH_BITS
    for index in range(count):
        width = HASH_BITS // count + (1 if index < HASH_BITS % count else 0)
        end -= width
        result.append((end, width))
    return result


def band_values(phash, band_list):
    """The value of each band of an integer hash."""
    return [(phash >> shift) & ((1 << width) - 1) for shift, width in band_list]


class _OneLine:
    """Feeds a csv.reader one line at a time, so the reader is built once (as in mapper.py)."""

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
    """One physical line -> its CSV fields; each line is parsed alone (see mapper.py)."""
    line = line.rstrip("\r\n")
    if '"' not in line:
        return line.split(",")
    _FEED.line = line
    try:
        return next(_READER)
    except (csv.Error, StopIteration):
        raise MalformedRow("bad_quoting") from None


def is_header(fields):
    return DEFAULT_COLUMNS[0] in fields and all(name in fields for name in REQUIRED_COLUMNS)


def column_positions(columns):
    return {name: columns.index(name) for name in REQUIRED_COLUMNS}, len(columns)


DEFAULT_POSITIONS = column_positions(DEFAULT_COLUMNS)


def row_values(fields, positions=None):
    """One CSV row -> (id, phash or None, sha256 or None), hashes lower-case. An empty hash is
    None (that row takes no part in that kind of duplicate); a malformed one raises."""
    where, width = positions or DEFAULT_POSITIONS
    if len(fields) != width:
        raise MalformedRow("wrong_field_count")
    doc_id = fields[where["id"]].strip()
    if not _ID.match(doc_id):
        raise MalformedRow("bad_id")
    phash = fields[where["phash"]].strip()
    if phash and not _PHASH.match(phash):
        raise MalformedRow("bad_phash")
    sha = fields[where["sha256"]].strip()
    if sha and not _SHA256.match(sha):
        raise MalformedRow("bad_sha256")
    return doc_id, phash.lower() or None, sha.lower() or None


def records(doc_id, phash, sha, band_list):
    """The output records of one row: (EXACT_KEY, sha256, id) and, per band k,
    ("band<k>", band value as hex, id, phash)."""
    found = []
    if sha:
        found.append((EXACT_KEY, sha, doc_id))
    if phash:
        for index, ((_, width), value) in enumerate(zip(band_list, band_values(int(phash, 16), band_list))):
            found.append(("band%d" % index, "%0*x" % ((width + 3) // 4, value), doc_id, phash))
    return found


def map_record(fields, band_list, positions=None):
    """One CSV row -> its output records (see `records`). Raises MalformedRow."""
    return records(*row_values(fields, positions), band_list=band_list)


def map_lines(lines, threshold, counters):
    """CSV lines -> output lines, counting header, good, malformed and hash-less rows."""
    band_list = bands(threshold)
    positions = DEFAULT_POSITIONS
    rows = no_phash = no_sha = 0
    for line in lines:
        if not line.strip():
            counters["blank_lines"] = counters.get("blank_lines", 0) + 1
            continue
        try:
            fields = parse_line(line)
            if is_header(fields):
                # A header names the columns for the rows after it.
                positions = column_positions(fields)
                counters["header_rows"] = counters.get("header_rows", 0) + 1
                continue
            doc_id, phash, sha = row_values(fields, positions)
        except MalformedRow as bad:
            name = "malformed_" + bad.reason
            counters[name] = counters.get(name, 0) + 1
            counters["malformed_rows"] = counters.get("malformed_rows", 0) + 1
            continue
        rows += 1
        no_phash += phash is None
        no_sha += sha is None
        for record in records(doc_id, phash, sha, band_list):
            yield "\t".join(record) + "\n"
    for name, value in (("rows", rows), ("no_phash", no_phash), ("no_sha256", no_sha)):
        if value:
            counters[name] = counters.get(name, 0) + value


def report_counters(counters, stderr):
    for name in sorted(counters):
        stderr.write("reporter:counter:%s,%s,%d\n" % (COUNTER_GROUP, name, counters[name]))
    stderr.flush()


def utf8_lines(binary):
    """Lines of a byte stream split on LF only, decoded as UTF-8 (bad bytes replaced)."""
    for raw in binary:
        yield raw.decode("utf-8", "replace")


def parse_threshold(argv, err):
    """--threshold T from argv (the only option), or None after writing the usage to err."""
    threshold = DEFAULT_THRESHOLD
    if argv:
        if len(argv) != 2 or argv[0] != "--threshold" or not argv[1].isdigit() \
                or int(argv[1]) > MAX_THRESHOLD:
            err.write("usage: duplicates_mapper.py [--threshold T]  (T = 0..%d, default %d; "
                      "reads CSV on stdin)\n" % (MAX_THRESHOLD, DEFAULT_THRESHOLD))
            return None
        threshold = int(argv[1])
    return threshold


def main(argv=None, stdin=None, stdout=None, stderr=None):
    argv = sys.argv[1:] if argv is None else argv
    err = stderr if stderr is not None else sys.stderr
    threshold = parse_threshold(argv, err)
    if threshold is None:
        return 2
    lines = stdin if stdin is not None else utf8_lines(sys.stdin.buffer)
    out = stdout if stdout is not None else io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8",
                                                             newline="\n")
    counters = {}
    for text in map_lines(lines, threshold, counters):
        out.write(text)
    out.flush()
    report_counters(counters, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
