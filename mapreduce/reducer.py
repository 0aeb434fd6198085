#!/usr/bin/env python3
"""Hadoop-streaming reducer (and combiner): merges partial summaries of each group.

Standalone like mapper.py: standard library only, Python 3.7-compatible (with streaming_common.py).

Input, sorted so that lines of one group are adjacent (key = the first two fields):

    dimension  value  count  total_kb  min_kb  max_kb  [mean_kb]

Output, one line per group:

    reducer.py              dimension  value  count  total_kb  min_kb  max_kb  mean_kb
    reducer.py --combiner   dimension  value  count  total_kb  min_kb  max_kb

The combiner's output is exactly the mapper's format, and a final line is accepted as input
too (its mean is recomputed, not read), so the reducer can merge its own output at any depth:
the result does not depend on how the input was split, combined or ordered. Sizes are KiB with
two decimals, summed as whole hundredths (exact); the mean is rounded half up to two decimals.
"""
import sys
from itertools import groupby

if __package__:  # imported as mapreduce.reducer (run_job.py, the tests)
    from . import streaming_common as common
else:  # run as a script: streaming_common.py is beside it (see its docstring for the cluster)
    import streaming_common as common

kib = common.kib


class MalformedPartial(ValueError):
    """A line that is not a partial or final summary line."""


def hundredths(text):
    """'12.34' -> 1234, exactly (no float on the way)."""
    whole, _, frac = text.partition(".")
    if not _digits(whole) or len(frac) > 2 or (frac and not _digits(frac)):
        raise MalformedPartial("not a size: %r" % text)
    return int(whole) * 100 + int((frac + "00")[:2])


def _digits(text):
    return text.isascii() and text.isdigit()


def mean_kib(total, count):
    """total / count hundredths as two-decimal KiB, rounded half up with integers only."""
    return kib((2 * total + count) // (2 * count))


def parse_partial(line):
    """A line -> ((dimension, value), (count, total, min, max)) with sizes in hundredths."""
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) not in (6, 7):
        raise MalformedPartial("expected 6 or 7 tab-separated fields, got %d" % len(fields))
    dimension, value, count = fields[0], fields[1], fields[2]
    if not _digits(count) or int(count) < 1:
        raise MalformedPartial("not a count: %r" % count)
    return (dimension, value), (int(count), hundredths(fields[3]), hundredths(fields[4]), hundredths(fields[5]))


def reduce_group(key, values):
    """Merge the (count, total, min, max) partials of one group into one."""
    count = total = 0
    low = high = None
    for n, sub_total, sub_low, sub_high in values:
        count += n
        total += sub_total
        low = sub_low if low is None or sub_low < low else low
        high = sub_high if high is None or sub_high > high else high
    return key, (count, total, low, high)


def format_line(key, merged, final):
    count, total, low, high = merged
    line = "%s\t%s\t%d\t%s\t%s\t%s" % (key[0], key[1], count, kib(total), kib(low), kib(high))
    return line + ("\t%s\n" % mean_kib(total, count) if final else "\n")


def reduce_lines(lines, counters, final=True):
    """Sorted partial lines -> one merged line per group; malformed lines are counted, skipped."""

    def parsed():
        for line in lines:
            if not line.strip():
                continue
            try:
                yield parse_partial(line)
            except MalformedPartial:
                common.count(counters, "reducer_malformed_lines")

    for key, group in groupby(parsed(), key=lambda pair: pair[0]):
        yield format_line(*reduce_group(key, (partial for _, partial in group)), final=final)


def main(argv=None, stdin=None, stdout=None, stderr=None):
    argv = sys.argv[1:] if argv is None else argv
    err = stderr if stderr is not None else sys.stderr
    if argv not in ([], ["--combiner"]):
        err.write("usage: reducer.py [--combiner]  (reads sorted partial lines on stdin)\n")
        return 2
    lines = stdin if stdin is not None else common.stdin_text()
    counters = {}
    return common.write_output(reduce_lines(lines, counters, final=argv != ["--combiner"]), counters, stdout, err)


if __name__ == "__main__":
    sys.exit(main())
