"""`mapreduce_duplicates`, `duplicates_precision` and `duplicates_recall`.

- mapreduce_duplicates: the duplicates job's rows/s through the pipe runner on the same CSV as
  mapreduce_pipe (fixtures.documents: uniformly random pHashes, so nearly every band bucket
  is big and almost nothing is a duplicate; the worst case for the search, not a typical
  library). Floor: mapreduce_pipe, the summary job on the same rows through the same runner.
  The detail has the job's counters and the sizes of the band buckets.
- duplicates_precision / duplicates_recall: pairs of documents the job puts in one group
  against the pairs brute force (all pairs + connected components) puts in one, on generated
  rows with planted near duplicates (fixtures.duplicates), not on images; how well
  pHash itself finds copies of images is bench/duplicates_threshold.py's measurement.
"""
from __future__ import annotations

import csv
import itertools
import time
from collections import Counter
from pathlib import Path

from bench.figures import Figure
from bench.pipeline import BenchError

PLANTED_ROWS = 5000
PLANTED_SEED = 3


def band_bucket_sizes(csv_path: Path, threshold: int) -> dict:
    """Rows per band bucket of the CSV's pHashes: what the reducers of stage 1 hold."""
    from mapreduce.duplicates_mapper import band_values, bands

    band_list = bands(threshold)
    counts = [Counter() for _ in band_list]
    with open(csv_path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        column = next(reader).index("phash")
        for row in reader:
            if len(row) > column and row[column]:
                for counter, value in zip(counts, band_values(int(row[column], 16), band_list)):
                    counter[value] += 1
    sizes = [n for counter in counts for n in counter.values()]
    return {"buckets": len(sizes), "mean_rows": round(sum(sizes) / max(1, len(sizes)), 1), "max_rows": max(sizes or [0]),
            "all_pairs_in_buckets": sum(n * (n - 1) // 2 for n in sizes)}


def same_group_pairs(lines, kind: str = "near") -> set[tuple[str, str]]:
    pairs = set()
    for line in lines:
        fields = line.rstrip("\n").split("\t")
        if fields[0] == kind:
            pairs.update(itertools.combinations(sorted(fields[3].split(",")), 2))
    return pairs


def brute_force_pairs(docs: list[dict], threshold: int) -> set[tuple[str, str]]:
    """Pairs of ids in one connected component of all pairs within `threshold` bits."""
    items = [(d["id"], int(d["phash"], 16)) for d in docs if d["phash"]]
    parent = {doc_id: doc_id for doc_id, _ in items}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (a, ha), (b, hb) in itertools.combinations(items, 2):
        if bin(ha ^ hb).count("1") <= threshold:
            parent[find(a)] = find(b)
    members: dict[str, list[str]] = {}
    for doc_id in parent:
        members.setdefault(find(doc_id), []).append(doc_id)
    return {pair for group in members.values() for pair in itertools.combinations(sorted(group), 2)}


def duplicates_figures(csv_path: Path, rows: int, work: Path, summary_rows_per_s: float | None) -> list[Figure]:
    from mapreduce.duplicates_reducer import DEFAULT_MAX_BUCKET, DEFAULT_THRESHOLD
    from mapreduce.export_csv import write_csv
    from mapreduce.runners.common import JobSpec
    from mapreduce.runners.pipe import run_pipe
    from fixtures.duplicates import planted_documents

    threshold = DEFAULT_THRESHOLD
    job = run_pipe(JobSpec(input=str(csv_path), output_dir=work / "mapreduce-duplicates", overwrite=True,
                           job="duplicates"))
    if job.counters.get("rows") != rows:
        raise BenchError(f"duplicates job: the mapper counted {job.counters.get('rows')} rows of {rows}")
    counters = {name: job.counters[name] for name in
                ("comparisons", "near_pairs", "near_edges", "exact_edges", "near_groups", "exact_groups",
                 "giant_buckets", "giant_bucket_hashes", "uncompared_pairs") if name in job.counters}
    throughput = Figure("mapreduce_duplicates", rows / job.seconds, "rows/s", floor=summary_rows_per_s,
                        floor_name="mapreduce_pipe",
                        detail={"rows": rows, "seconds": round(job.seconds, 2), "threshold": threshold,
                                "max_bucket": DEFAULT_MAX_BUCKET, "groups_out": job.groups_out,
                                "counters": counters, "band_buckets": band_bucket_sizes(csv_path, threshold),
                                "input": "fixtures.documents (uniformly random pHashes)"})

    docs, clusters = planted_documents(PLANTED_ROWS, threshold, seed=PLANTED_SEED)
    planted = work / "duplicates-planted.csv"
    with open(planted, "w", encoding="utf-8", newline="") as out:
        write_csv(docs, out)
    result = run_pipe(JobSpec(input=str(planted), output_dir=work / "mapreduce-duplicates-planted", overwrite=True,
                              job="duplicates"))
    found = same_group_pairs(result.merged.read_text(encoding="utf-8").splitlines())
    started = time.perf_counter()
    truth = brute_force_pairs(docs, threshold)
    brute_seconds = time.perf_counter() - started
    hits = len(found & truth)
    detail = {"rows": PLANTED_ROWS, "clusters": len(clusters), "threshold": threshold,
              "job_pairs": len(found), "brute_force_pairs": len(truth), "common_pairs": hits,
              "job_seconds": round(result.seconds, 2), "brute_force_seconds": round(brute_seconds, 2),
              "uncompared_pairs": result.counters.get("uncompared_pairs", 0),
              "input": "generated rows with planted pHash copies (fixtures.duplicates), not images"}
    precision = Figure("duplicates_precision", hits / len(found) if found else 1.0, "share", detail=detail,
                       note="" if found else "the job found no pairs")
    recall = Figure("duplicates_recall", hits / len(truth) if truth else 1.0, "share", detail=detail)
    return [throughput, precision, recall]
