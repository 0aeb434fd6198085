#!/usr/bin/env python3
"""Hadoop-streaming mapper of the duplicates job, stage 1: CSV rows in, candidate keys out.

    duplicates_mapper.py [--threshold T]

Standalone like mapper.py (EMR nodes have nothing of ours installed): standard library only,
and Python 3.7-compatible (with streaming_common.py).

For each good row, one line for its sha256 and one line per band of its pHash, tab-separated,
key = the first two fields:

    sha256  <sha256 hex>        <id>
    band<k> <band k's bits, hex> <id>  <phash>        k = 0 .. T

The 64 bits of the pHash are cut into T+1 bands of contiguous bits. Two hashes at most T bits
apart differ in at most T bands, so they agree exactly on at least one of the T+1 (pigeonhole),
and meet under that band's key. duplicates_reducer.py compares the hashes under each key.

Counters go to stderr as `reporter:counter:imgpipe,<name>,<n>`; only stdout carries data.
"""
import re
import sys

if __package__:  # imported as mapreduce.duplicates_mapper (run_job.py, the tests)
    from . import streaming_common as common
else:  # run as a script: streaming_common.py is beside it (see its docstring for the cluster)
    import streaming_common as common

MalformedRow = common.MalformedRow
DEFAULT_COLUMNS = common.EXPORT_COLUMNS
REQUIRED_COLUMNS = ("id", "phash", "sha256")
DEFAULT_POSITIONS = common.column_positions(DEFAULT_COLUMNS, REQUIRED_COLUMNS)

HASH_BITS = common.HASH_BITS
DEFAULT_THRESHOLD = common.DEFAULT_THRESHOLD
MAX_THRESHOLD = common.MAX_THRESHOLD
bands = common.bands
EXACT_KEY = common.EXACT_KEY

# MeiliSearch's rule for document ids; it also keeps the tab and comma framing of the output safe.
_ID = re.compile(r"[A-Za-z0-9_-]{1,511}$", re.ASCII)
_PHASH = re.compile(r"[0-9a-fA-F]{16}$", re.ASCII)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}$", re.ASCII)


def band_values(phash, band_list):
    """The value of each band of an integer hash."""
    return [(phash >> shift) & ((1 << width) - 1) for shift, width in band_list]


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
    rows = no_phash = no_sha = 0
    for doc_id, phash, sha in common.read_rows(lines, REQUIRED_COLUMNS, row_values, counters):
        rows += 1
        no_phash += phash is None
        no_sha += sha is None
        for record in records(doc_id, phash, sha, band_list):
            yield "\t".join(record) + "\n"
    for name, value in (("rows", rows), ("no_phash", no_phash), ("no_sha256", no_sha)):
        if value:
            common.count(counters, name, value)


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
    lines = stdin if stdin is not None else common.utf8_lines(sys.stdin.buffer)
    counters = {}
    return common.write_output(map_lines(lines, threshold, counters), counters, stdout, err)


if __name__ == "__main__":
    sys.exit(main())
