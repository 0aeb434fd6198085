#!/usr/bin/env python3
"""Hadoop-streaming reducer of the duplicates job, stage 2 (a single reduce task): edges in,
groups out.

    duplicates_groups.py

Standalone like reducer.py: standard library only, Python 3.7-compatible (with streaming_common.py).

Input: the edges of duplicates_reducer.py, `kind id_a id_b`, in any order (the mapper of this
stage is /bin/cat). Lines of this script's own output are accepted too, so groups can be
merged again. The groups are the connected components of each kind's edges, found with
union-find; a component needs every edge of its kind, so the stage runs as one reduce task.

Output, one line per group of two or more, sorted, tab-separated:

    kind  group  size  ids

`kind` is exact or near, `group` the smallest id of the group, `ids` all of them, sorted and
comma-separated.
"""
import sys

if __package__:  # imported as mapreduce.duplicates_groups (run_job.py, the tests)
    from . import streaming_common as common
else:  # run as a script: streaming_common.py is beside it (see its docstring for the cluster)
    import streaming_common as common

KINDS = ("exact", "near")


class MalformedLine(ValueError):
    """A line that is neither an edge nor a group."""


class DisjointSets:
    """Union-find over ids, with path halving."""

    def __init__(self):
        self.parent = {}

    def find(self, item):
        parent = self.parent
        root = parent.setdefault(item, item)
        while root != parent[root]:
            parent[root] = parent[parent[root]]
            root = parent[root]
        while item != root:  # point the whole path at the root
            item, parent[item] = parent[item], root
        return root

    def union(self, a, b):
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[root_b] = root_a

    def groups(self):
        """The sets, each a sorted list, sets of one included."""
        members = {}
        for item in list(self.parent):
            members.setdefault(self.find(item), []).append(item)
        return [sorted(group) for group in members.values()]


def parse_line(line):
    """An edge or group line -> (kind, [ids]) of ids to join."""
    fields = line.rstrip("\r\n").split("\t")
    if fields[0] not in KINDS:
        raise MalformedLine(line)
    if len(fields) == 3 and fields[1] and fields[2]:
        return fields[0], fields[1:]
    if len(fields) == 4 and fields[2].isdigit():
        ids = fields[3].split(",")
        if fields[1] and len(ids) == int(fields[2]) and all(ids):
            return fields[0], ids
    raise MalformedLine(line)


def reduce_group(kind, joined):
    """The groups of one kind from lists of ids to join: [(group, size, ids)], groups of one
    left out, in order of their smallest id."""
    sets = DisjointSets()
    for ids in joined:
        for other in ids[1:]:
            sets.union(ids[0], other)
    return sorted((ids[0], len(ids), ids) for ids in sets.groups() if len(ids) > 1)


def format_group(kind, group):
    first, size, ids = group
    return "%s\t%s\t%d\t%s\n" % (kind, first, size, ",".join(ids))


def reduce_lines(lines, counters):
    """Edge or group lines in any order -> sorted group lines."""
    joined = {kind: [] for kind in KINDS}
    for line in lines:
        if not line.strip():
            continue
        try:
            kind, ids = parse_line(line)
        except MalformedLine:
            common.count(counters, "groups_malformed_lines")
            continue
        joined[kind].append(ids)
    for kind in KINDS:  # "exact" < "near": the output is sorted
        groups = reduce_group(kind, joined[kind])
        if groups:
            common.count(counters, kind + "_groups", len(groups))
            common.count(counters, kind + "_grouped_ids", sum(g[1] for g in groups))
        for group in groups:
            yield format_group(kind, group)


def main(argv=None, stdin=None, stdout=None, stderr=None):
    argv = sys.argv[1:] if argv is None else argv
    err = stderr if stderr is not None else sys.stderr
    if argv:
        err.write("usage: duplicates_groups.py  (reads edge lines on stdin, writes groups)\n")
        return 2
    lines = stdin if stdin is not None else common.stdin_text()
    counters = {}
    return common.write_output(reduce_lines(lines, counters), counters, stdout, err)


if __name__ == "__main__":
    sys.exit(main())
