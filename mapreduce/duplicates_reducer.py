#!/usr/bin/env python3
"""Hadoop-streaming reducer of the duplicates job, stage 1: the rows under one key -> edges.

    duplicates_reducer.py [--threshold T] [--max-bucket N]

Standalone like reducer.py: standard library only, Python 3.7-compatible (with streaming_common.py).

Input: duplicates_mapper.py's lines, sorted so that the lines of one key (the first two
fields) are adjacent. Output: one edge per line, tab-separated, `kind id_a id_b` with kind
`exact` or `near` and id_a < id_b. Edges only need to connect each group (duplicates_groups.py
joins them into connected components), so n equal hashes make n - 1 edges, not n^2 / 2.

- `sha256` keys: a star from the smallest id to every other id with that sha256 (exact).
- `band<k>` keys (a bucket: the hashes that agree on band k):
  * rows with the same pHash: a star from the smallest id, written from band 0 only (equal
    hashes agree on every band, and band 0 is the lowest);
  * distinct hashes: each pair at most T bits apart is verified (exact distance) and counted
    once, by the lowest band the two agree on (`near_pairs`); it becomes an edge between the
    smallest ids of the two hashes unless the bucket's edges already connect them.

A big bucket is searched the way the mapper cut the hash: two hashes of the bucket at most T
bits apart differ in at most T of its other 64 - w bits, so cut those into T+1 sub-bands and
the pair agrees on one of them (pigeonhole again). Sub-buckets are searched alike, down to
LEAF hashes or until cutting stops paying (it must halve the comparisons); a pair is
verified only under the lowest sub-band it agrees on at every level, so still once. This is
exact: on 1,000,000 random hashes at T = 8 (buckets of ~7,000) it makes 3.9 billion
comparisons instead of the 33 billion pairs of the buckets (mapreduce/README.md).

What cutting cannot shrink (many distinct hashes close together) is compared pair by pair, up
to N distinct hashes (`--max-bucket`, 0 = no limit). Beyond N, a giant group is cut further by
consecutive chunks of its free bits until each part holds at most N, and pairs in different
parts are not compared: near duplicates may be missed there. Counted, never silent:
`giant_buckets`, `giant_bucket_hashes` and `uncompared_pairs` (pairs not compared, an upper
bound of what is missing); run_job.py warns when they are not zero.
"""
import sys
from itertools import groupby, repeat

if __package__:  # imported as mapreduce.duplicates_reducer (run_job.py, the tests)
    from . import streaming_common as common
else:  # run as a script: streaming_common.py is beside it (see its docstring for the cluster)
    import streaming_common as common

# One cut of the pHash for the mapper and this reducer.
HASH_BITS = common.HASH_BITS
DEFAULT_THRESHOLD = common.DEFAULT_THRESHOLD
MAX_THRESHOLD = common.MAX_THRESHOLD
bands = common.bands
EXACT_KEY = common.EXACT_KEY
BAND_PREFIX = "band"
# Distinct hashes a group that cutting cannot shrink may compare all pairs of: 10,000 is 50
# million comparisons, ~3 s on Python 3.11 and ~20 s on 3.9 (measured in mapreduce/README.md).
DEFAULT_MAX_BUCKET = 10000


class MalformedLine(ValueError):
    """A line that is not a mapper output line."""


def band_masks(band_list):
    """Each band as a mask of its bits: two hashes agree on band k iff (a ^ b) & mask_k == 0."""
    return [((1 << width) - 1) << shift for shift, width in band_list]


if hasattr(int, "bit_count"):  # Python 3.10+
    def distances(value, others):
        """Bits by which `value` differs from each of `others`; the loop runs in C."""
        return map(int.bit_count, map(value.__xor__, others))
else:
    def distances(value, others):
        return map(str.count, map(bin, map(value.__xor__, others)), repeat("1"))


def close_pairs(hashes, threshold):
    """(i, j), i < j, of the hashes at most `threshold` bits apart."""
    found = []
    for i in range(len(hashes) - 1):
        tail = hashes[i + 1:]
        # Nearly every hash is far from the others: one pass in C decides most rows.
        if min(distances(hashes[i], tail)) <= threshold:
            found.extend((i, i + 1 + j) for j, bits in enumerate(distances(hashes[i], tail)) if bits <= threshold)
    return found


def chunk_masks(free, count):
    """The set bits of `free` cut into `count` masks of consecutive bits, the first ones a bit
    wider (as the mapper cuts bands); None if there are fewer bits than masks."""
    positions = [bit for bit in range(HASH_BITS - 1, -1, -1) if free >> bit & 1]
    if len(positions) < count:
        return None
    masks = []
    start = 0
    for index in range(count):
        width = len(positions) // count + (1 if index < len(positions) % count else 0)
        mask = 0
        for bit in positions[start:start + width]:
            mask |= 1 << bit
        masks.append(mask)
        start += width
    return masks


def sub_buckets(hashes, mask):
    """The hashes grouped by their bits under `mask`, groups of one left out (sorting and
    grouping run in C)."""
    key = mask.__and__
    groups = (list(group) for _, group in groupby(sorted(hashes, key=key), key=key))
    return [group for group in groups if len(group) > 1]


def pairs_count(n):
    return n * (n - 1) // 2


# Up to this many hashes a bucket is compared pair by pair: cutting it costs more than it saves.
# Measured on 20 buckets of ~7,500 random hashes (T = 8): 64 -> 6.8 s, 128 -> 5.6 s, 256 -> 5.4 s,
# 512 -> 5.3 s; 256 keeps the pair-by-pair groups small for dense clusters.
LEAF = 256


class Search:
    """The near pairs of one band bucket; see the module docstring."""

    def __init__(self, threshold, max_bucket, counters):
        self.threshold = threshold
        self.max_bucket = max_bucket
        self.counters = counters
        self.found = []  # (a, b) hash pairs, each once
        self.comparisons = 0

    def run(self, hashes, free, lower):
        """`free`: the bits the hashes may still differ in; `lower`: per level, the masks of the
        (sub-)bands below the one these hashes agree on."""
        n = len(hashes)
        if n > LEAF:
            masks = chunk_masks(free, self.threshold + 1)
            if masks:
                parts = [sub_buckets(hashes, mask) for mask in masks]
                if 2 * sum(pairs_count(len(group)) for part in parts for group in part) < pairs_count(n):
                    for index, (mask, part) in enumerate(zip(masks, parts)):
                        sub_free, sub_lower = free & ~mask, lower + [masks[:index]]
                        for group in part:
                            if len(group) > LEAF:
                                self.run(group, sub_free, sub_lower)
                            else:
                                self.compare(group, sub_lower)
                    return
        if self.max_bucket and n > self.max_bucket:
            for group in self.giant(hashes, free):
                self.compare(group, lower)
        else:
            self.compare(hashes, lower)

    def compare(self, group, lower):
        """Every pair of the group, verified; kept when it is the lowest (sub-)band's."""
        self.comparisons += pairs_count(len(group))
        for i, j in close_pairs(group, self.threshold):
            a, b = group[i], group[j]
            difference = a ^ b
            if not any(difference & mask == 0 for level in lower for mask in level):
                self.found.append((a, b))

    def giant(self, hashes, free):
        """Parts of at most max_bucket hashes, cut by consecutive chunks of the free bits."""
        masks = chunk_masks(free, max(1, min(HASH_BITS, bin(free).count("1")) // 4)) or [free]
        done, pending = [], [(hashes, 0)]
        while pending:
            group, level = pending.pop()
            if len(group) <= self.max_bucket or level == len(masks):
                done.append(group)
                continue
            key = masks[level].__and__
            pending.extend((list(part), level + 1) for _, part in groupby(sorted(group, key=key), key=key))
        _count(self.counters, "giant_buckets", 1)
        _count(self.counters, "giant_bucket_hashes", len(hashes))
        _count(self.counters, "uncompared_pairs",
               pairs_count(len(hashes)) - sum(pairs_count(len(group)) for group in done))
        return done


def _count(counters, name, value):
    if value:
        counters[name] = counters.get(name, 0) + value


def star(kind, ids):
    """Edges from the smallest of `ids` to each other one."""
    ordered = sorted(set(ids))
    return [(kind, ordered[0], other) for other in ordered[1:]]


def reduce_group(key, values, threshold=DEFAULT_THRESHOLD, max_bucket=DEFAULT_MAX_BUCKET, counters=None):
    """The edges of one key. `values`: ids for the sha256 key, (id, phash as int) for a band."""
    counters = {} if counters is None else counters
    kind, _ = key
    if kind == EXACT_KEY:
        edges = star("exact", values)
        _count(counters, "exact_edges", len(edges))
        return edges
    band = int(kind[len(BAND_PREFIX):])
    ids_of = {}
    for doc_id, value in values:
        ids_of.setdefault(value, []).append(doc_id)
    edges = []
    if band == 0:
        for ids in ids_of.values():
            edges.extend(star("near", ids))
        _count(counters, "same_phash_edges", len(edges))
    if len(ids_of) < 2:
        return edges
    masks = band_masks(bands(threshold))
    search = Search(threshold, max_bucket, counters)
    search.run(sorted(ids_of), ((1 << HASH_BITS) - 1) & ~masks[band], [masks[:band]])
    _count(counters, "comparisons", search.comparisons)
    _count(counters, "near_pairs", len(search.found))
    # The bucket's pairs joined into a forest: an edge only where it connects something new.
    first = {value: min(ids) for value, ids in ids_of.items()}
    parent = {}

    def root(item):
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    written = 0
    for a, b in sorted(search.found):
        root_a, root_b = root(a), root(b)
        if root_a != root_b:
            parent[root_b] = root_a
            low, high = sorted((first[a], first[b]))
            if low != high:  # one id listed with two hashes
                edges.append(("near", low, high))
                written += 1
    _count(counters, "near_edges", written)
    return edges


def parse_line(line, threshold):
    """A mapper line -> ((kind, value), id) or ((kind, value), (id, phash as int))."""
    fields = line.rstrip("\r\n").split("\t")
    kind = fields[0]
    if kind == EXACT_KEY and len(fields) == 3 and fields[2]:
        return (kind, fields[1]), fields[2]
    if kind.startswith(BAND_PREFIX) and len(fields) == 4 and fields[2] and len(fields[3]) == 16:
        index = kind[len(BAND_PREFIX):]
        if index.isdigit() and int(index) <= threshold:
            try:
                return (kind, fields[1]), (fields[2], int(fields[3], 16))
            except ValueError:
                pass
    raise MalformedLine(line)


def reduce_lines(lines, threshold, max_bucket, counters):
    """Sorted mapper lines -> edge lines; malformed lines are counted and skipped."""

    def parsed():
        for line in lines:
            if not line.strip():
                continue
            try:
                yield parse_line(line, threshold)
            except MalformedLine:
                common.count(counters, "reducer_malformed_lines")

    for key, group in groupby(parsed(), key=lambda pair: pair[0]):
        values = [value for _, value in group]
        for edge in reduce_group(key, values, threshold, max_bucket, counters):
            yield "%s\t%s\t%s\n" % edge


def parse_args(argv):
    """(threshold, max_bucket) from argv, or None for a usage error."""
    options = {"--threshold": DEFAULT_THRESHOLD, "--max-bucket": DEFAULT_MAX_BUCKET}
    if len(argv) % 2:
        return None
    for name, value in zip(argv[::2], argv[1::2]):
        if name not in options or not value.isdigit():
            return None
        options[name] = int(value)
    if options["--threshold"] > MAX_THRESHOLD:
        return None
    return options["--threshold"], options["--max-bucket"]


def main(argv=None, stdin=None, stdout=None, stderr=None):
    argv = sys.argv[1:] if argv is None else argv
    err = stderr if stderr is not None else sys.stderr
    parsed = parse_args(argv)
    if parsed is None:
        err.write("usage: duplicates_reducer.py [--threshold T] [--max-bucket N]  (T = 0..%d, default %d; "
                  "N default %d, 0 = no limit; reads sorted mapper lines on stdin)\n"
                  % (MAX_THRESHOLD, DEFAULT_THRESHOLD, DEFAULT_MAX_BUCKET))
        return 2
    threshold, max_bucket = parsed
    lines = stdin if stdin is not None else common.stdin_text()
    counters = {}
    return common.write_output(reduce_lines(lines, threshold, max_bucket, counters), counters, stdout, err)


if __name__ == "__main__":
    sys.exit(main())
