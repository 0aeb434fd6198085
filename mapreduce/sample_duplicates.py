"""Sample documents with planted duplicates, for the duplicates job's tests and benchmark.

Rows, not images: the pHashes are generated, not computed (mapreduce/measure_threshold.py
measures what real copies of images look like). Most documents keep the random pHash of
mapreduce.sample_data; clusters get copies of an original's pHash 1..T bits away, decoys
T+1..T+3 bits away that must stay out of the original's group, exact copies (same sha256 and
pHash) and copies with the same pHash but other bytes.

    python -m mapreduce.sample_duplicates --rows 5000 --out /tmp/planted.csv
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from imgpipe import cli
from mapreduce.sample_data import sample_documents

CLUSTER_SPAN = 8  # documents per cluster (original, copies, decoys, twins); the rest stay random


@dataclass
class Cluster:
    original: int  # index of the original document
    copies: list[int] = field(default_factory=list)  # at most T bits away, or exact copies
    decoys: list[int] = field(default_factory=list)  # T+1..T+3 bits from the original and every copy


def flip(phash: str, bits) -> str:
    value = int(phash, 16)
    for bit in bits:
        value ^= 1 << bit
    return "%016x" % value


def planted_documents(count: int, threshold: int, seed: int = 1,
                      planted_share: float = 0.4) -> tuple[list[dict], list[Cluster]]:
    """`count` documents; the first `planted_share` of them in clusters of CLUSTER_SPAN. A
    copy flips up to threshold // 2 bits of the original among 32 positions, a decoy more than
    threshold bits among the other 32, so a decoy is more than T from the copies too."""
    rng = random.Random(seed)
    docs = sample_documents(count, seed=rng.randint(0, 10 ** 6), awkward=False)
    clusters = []
    position = 0
    while position + CLUSTER_SPAN <= count * planted_share:
        original = docs[position]
        bits = list(range(64))
        rng.shuffle(bits)
        copy_bits, decoy_bits = bits[:32], bits[32:]
        cluster = Cluster(position)
        for offset in range(1, rng.randint(2, 5)):
            doc = docs[position + offset]
            doc["phash"] = flip(original["phash"], rng.sample(copy_bits, rng.randint(1, max(1, threshold // 2))))
            cluster.copies.append(position + offset)
        following = position + len(cluster.copies) + 1
        for offset in range(rng.randint(0, 2)):
            docs[following + offset]["phash"] = flip(
                original["phash"], rng.sample(decoy_bits, min(32, rng.randint(threshold + 1, threshold + 3))))
            cluster.decoys.append(following + offset)
        twin = position + len(cluster.copies) + len(cluster.decoys) + 1
        roll = rng.random()
        if roll < 0.3:  # an exact copy: the same bytes
            docs[twin]["phash"], docs[twin]["sha256"] = original["phash"], original["sha256"]
            cluster.copies.append(twin)
        elif roll < 0.4:  # the same pHash, other bytes
            docs[twin]["phash"] = original["phash"]
            cluster.copies.append(twin)
        clusters.append(cluster)
        position += CLUSTER_SPAN
    return docs, clusters


def main(argv: list[str] | None = None) -> int:
    from mapreduce.duplicates_reducer import DEFAULT_THRESHOLD
    from mapreduce.export_csv import write_csv

    p = cli.parser("python -m mapreduce.sample_duplicates", __doc__, [
        "python -m mapreduce.sample_duplicates --rows 5000 --out /tmp/planted.csv",
        "python -m mapreduce.sample_duplicates --rows 100000 --threshold 6 --out /tmp/planted.csv"])
    p.add_argument("--rows", type=int, required=True, help="rows to write")
    p.add_argument("--out", type=Path, required=True, help="CSV file to write")
    p.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD, help="the T the copies and decoys are planted for")
    p.add_argument("--seed", type=int, default=1, help="random seed (same seed, same file)")
    args = p.parse_args(argv)
    docs, clusters = planted_documents(args.rows, args.threshold, args.seed)
    with open(args.out, "w", encoding="utf-8", newline="") as out:
        write_csv(docs, out)
    print(f"wrote {len(docs)} rows with {len(clusters)} planted clusters to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
