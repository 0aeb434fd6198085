"""The duplicates job's groups, for people: a table (kind, size, the files, the bytes a clean-up
would reclaim) and a picture of a few groups' thumbnails side by side.

The job writes `kind  group  size  ids` lines (mapreduce/README.md); the ids are resolved to
documents with one search per group (`id IN [...]`, the search-only key), so only the groups
shown are read, however large the index.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from imgpipe import cli

MERGED_NAME = "duplicates.tsv"
MAX_GROUPS = 20  # rows of the table
PICTURE_GROUPS = 4
PICTURE_MEMBERS = 5


@dataclass(frozen=True)
class Group:
    kind: str  # exact or near
    group: str  # the smallest id
    ids: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.ids)


def find_output(path: Path) -> Path | None:
    """The duplicates output to read under `path`: its merged file, else its part files' folder."""
    if path.is_file():
        return path
    if (path / MERGED_NAME).is_file():
        return path / MERGED_NAME
    parts = sorted(path.glob("part-*")) if path.is_dir() else []
    return path if parts else None


def read_groups(path: Path) -> tuple[list[Group], int]:
    """Groups from the merged file or the part files, biggest first; and how many lines were skipped."""
    files = sorted(path.glob("part-*")) if path.is_dir() else [path]
    groups, skipped = [], 0
    for file in files:
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) != 4 or fields[0] not in ("exact", "near") or not fields[2].isdigit():
                skipped += int(bool(line.strip()))
                continue
            ids = tuple(i for i in fields[3].split(",") if i)
            if len(ids) != int(fields[2]) or len(ids) < 2:
                skipped += 1
                continue
            groups.append(Group(fields[0], fields[1], ids))
    groups.sort(key=lambda g: (g.kind != "exact", -g.size, g.group))
    return groups, skipped


def resolve(search, groups: list[Group]) -> dict[str, dict]:
    """id -> document for every member of `groups`, by search (`search(filter, limit)` returns hits)."""
    documents: dict[str, dict] = {}
    for group in groups:
        wanted = [i for i in group.ids if i not in documents]
        if wanted:
            literal = ", ".join(json.dumps(i) for i in wanted)
            for hit in search(f"id IN [{literal}]", len(wanted)):
                documents[hit["id"]] = hit
    return documents


def reclaimable_bytes(group: Group, documents: dict[str, dict]) -> int:
    """What deleting all but the largest member would free (members not in the index count 0)."""
    sizes = sorted((int(documents.get(i, {}).get("size_bytes") or 0) for i in group.ids), reverse=True)
    return sum(sizes[1:])


def table_rows(groups: list[Group], documents: dict[str, dict], limit: int = MAX_GROUPS) -> list[list]:
    from visualize.tables import human_size

    rows = []
    for group in groups[:limit]:
        names = [cli.printable(documents.get(i, {}).get("file_name") or i[:12]) for i in group.ids]
        shown = ", ".join(names[:4]) + (f", … ({group.size - 4} more)" if group.size > 4 else "")
        rows.append([group.kind, group.size, human_size(reclaimable_bytes(group, documents) / 1024), shown])
    return rows


def totals(groups: list[Group], documents: dict[str, dict]) -> dict:
    return {"exact_groups": sum(g.kind == "exact" for g in groups), "near_groups": sum(g.kind == "near" for g in groups),
            "images_in_groups": len({i for g in groups for i in g.ids}),
            "reclaimable_bytes_exact": sum(reclaimable_bytes(g, documents) for g in groups if g.kind == "exact")}


def picture(s3_client, bucket: str, groups: list[Group], documents: dict[str, dict]):
    """A Chart: one row of thumbnails per group (the first PICTURE_GROUPS near groups, else exact)."""
    from matplotlib.figure import Figure

    from visualize.charts import DPI, Chart
    from visualize.previews import _caption, fetch_thumbnails

    chosen = ([g for g in groups if g.kind == "near"] or groups)[:PICTURE_GROUPS]
    rows = []
    for group in chosen:
        members = [documents[i] for i in group.ids if i in documents][:PICTURE_MEMBERS]
        thumbs, _ = fetch_thumbnails(s3_client, bucket, members, PICTURE_MEMBERS)
        if thumbs:
            rows.append((group, thumbs))
    columns = max((len(t) for _, t in rows), default=1)
    fig = Figure(figsize=(2.4 * columns + 0.4, 2.6 * max(1, len(rows)) + 0.6), dpi=DPI, layout="constrained")
    fig.suptitle(f"Duplicate and near-duplicate groups ({len(rows)} of {len(groups)})", fontsize=13)
    for r, (group, thumbs) in enumerate(rows):
        for c, thumb in enumerate(thumbs):
            ax = fig.add_subplot(max(1, len(rows)), columns, r * columns + c + 1)
            ax.imshow(thumb.pixels)
            ax.set_title(("" if c else f"{group.kind}, {group.size} images\n") + _caption(thumb), fontsize=8)
            ax.set_axis_off()
    import pandas as pd

    data = pd.DataFrame([{"group": g.group, "kind": g.kind, "file_name": t.file_name}
                         for g, thumbs in rows for t in thumbs], columns=["group", "kind", "file_name"])
    return Chart("duplicates", fig, data)
