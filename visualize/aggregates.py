"""What the charts and the totals show, as counts: images per size bin, processing hour, format
and face count, the modification range and the total size. Built from MeiliSearch facets without
reading a document (`from_index`), or from documents (`from_frame`: every document of an index,
or a CSV); the same documents give the same numbers either way. report.py and the dashboard
draw from these alone.

Why facets: at a million images, reading every document takes minutes and gigabytes, while
MeiliSearch counts the documents holding each value of a filterable attribute exactly, in
milliseconds (a hit count would not do: it stops at maxTotalHits, 1000). The document carries
what the charts need in countable form (imgpipe.document: `size_bin_kb`, a fixed histogram bin,
and `processed_hour`). A facet returns at most maxValuesPerFacet values, so face counts are read
below MAX_FACE_BAR and counted at and above it, and the image count comes from `bucket`, which
holds one value per bucket. Facets give counts, minima and maxima but no sums: the total size is
exact from documents, or from the MapReduce output when it counts the same images, and otherwise
bounded by the size bins (each image lies between its bin's edges).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from imgpipe import meili
from imgpipe.document import SIZE_BIN_EDGES_KB, size_bin_kb
from imgpipe.errors import NOT_FOUND
from imgpipe.settings import Settings

MAX_FACE_BAR = 10  # images with this many faces or more share one "10+" bar
# MeiliSearch's default maxValuesPerFacet: a facet answering with this many values may have been cut.
FACET_LIMIT = 100
INDEX_FACETS = ("bucket", "format", "processed_hour", "size_bin_kb", "faces", "timestamp")
_UPPER_EDGE = dict(zip(SIZE_BIN_EDGES_KB, SIZE_BIN_EDGES_KB[1:] + (SIZE_BIN_EDGES_KB[-1] * 1.25,)))


class FacetsUnavailable(Exception):
    """The index cannot be counted with facets (its settings predate the fields counted)."""


@dataclass
class Aggregates:
    images: int
    size_bins: dict[float, int]  # lower edge (KiB) -> images, the bins that hold some, ascending
    hours: dict[int, int]  # hour 0..23 (UTC) of processing -> images, all 24
    formats: dict[str, int]  # most common first, ties by name
    faces: dict[int, int]  # 0 .. MAX_FACE_BAR - 1 faces -> images, the counts that occur
    faces_many: int  # images with MAX_FACE_BAR faces or more
    faces_max: int | None  # the most faces in one image
    modified: tuple[float, float] | None  # timestamp (Unix seconds) range
    size_total_kb: float | None  # the exact total size, when known
    size_total_images: int  # the images that total is over
    source: str  # where the counts come from, for people
    method: str  # "facets" or "documents"
    size_total_source: str = ""
    chart_sources: dict[str, str] = field(default_factory=dict)  # chart name -> where its numbers come from
    notes: list[str] = field(default_factory=list)

    @property
    def sized(self) -> int:
        """Images in the size histogram."""
        return sum(self.size_bins.values())

    @property
    def size_bounds_kb(self) -> tuple[float, float]:
        """Lower and upper bounds of the total size from the size bins alone."""
        return (sum(edge * n for edge, n in self.size_bins.items()),
                sum(_UPPER_EDGE[edge] * n for edge, n in self.size_bins.items()))

    @property
    def faces_counted(self) -> int:
        return sum(self.faces.values()) + self.faces_many

    @property
    def with_faces(self) -> int:
        return sum(n for faces, n in self.faces.items() if faces > 0) + self.faces_many

    def as_json(self) -> dict:
        """Plain JSON types: the dashboard's `?format=json`."""
        return {"images": self.images, "method": self.method, "source": self.source,
                "size_bins": [{"from_kb": edge, "to_kb": _UPPER_EDGE[edge], "images": n}
                              for edge, n in self.size_bins.items()],
                "hours": {f"{h:02d}": n for h, n in self.hours.items()}, "formats": dict(self.formats),
                "faces": {str(k): n for k, n in self.faces.items()}, f"faces_{MAX_FACE_BAR}_or_more": self.faces_many,
                "faces_max": self.faces_max, "modified": list(self.modified) if self.modified else None,
                "size_total_kb": self.size_total_kb, "size_total_images": self.size_total_images,
                "size_total_source": self.size_total_source, "size_bounds_kb": list(self.size_bounds_kb),
                "chart_sources": dict(self.chart_sources), "notes": list(self.notes)}


def upper_edge(edge: float) -> float:
    return _UPPER_EDGE[edge]


def _ordered_formats(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _faces(values) -> tuple[dict[int, int], int, int | None]:
    """(counts below MAX_FACE_BAR, count at or above, max) of integer face counts."""
    below: dict[int, int] = {}
    many, top = 0, None
    for value in values:
        top = value if top is None or value > top else top
        if value >= MAX_FACE_BAR:
            many += 1
        else:
            below[value] = below.get(value, 0) + 1
    return dict(sorted(below.items())), many, top


# --- from documents ------------------------------------------------------------------------------

def from_frame(frame, source: str) -> Aggregates:
    """The counts of a DataFrame of documents (visualize.documents.to_frame). A document without
    `size_bin_kb` or `processed_hour` (an older export) gets it computed as to_document would."""
    import pandas as pd

    from imgpipe.document import hour_of

    if frame.empty:
        return _empty(f"every document ({source})", "documents")
    bins = pd.to_numeric(frame["size_bin_kb"], errors="coerce")
    missing = bins.isna()
    if missing.any():
        size_bytes = pd.to_numeric(frame["size_bytes"], errors="coerce")
        size_bytes = size_bytes.fillna((pd.to_numeric(frame["size_kb"], errors="coerce") * 1024).round())
        known = missing & size_bytes.notna() & (size_bytes >= 0)
        bins = bins.copy()
        bins[known] = [size_bin_kb(int(b)) for b in size_bytes[known]]
    size_bins = {float(edge): int(n) for edge, n in sorted(bins.dropna().value_counts().items())}

    hours = pd.to_numeric(frame["processed_hour"], errors="coerce")
    if hours.isna().any():
        hours = hours.copy()
        hours[hours.isna()] = [hour_of(t) if isinstance(t, str) else None
                               for t in frame["processed_at"][hours.isna()]]
        hours = pd.to_numeric(hours, errors="coerce")
    per_hour = {h: 0 for h in range(24)}
    for hour, n in hours.dropna().astype(int).value_counts().items():
        if 0 <= hour < 24:
            per_hour[int(hour)] = int(n)

    formats = _ordered_formats({str(k): int(v) for k, v in frame["format"].dropna().astype(str).value_counts().items()})
    faces, many, top = _faces(int(v) for v in frame["faces"].dropna().astype(int))
    stamps = frame["timestamp"].dropna()
    sizes = frame["size_kb"].dropna()
    chart = f"every document ({source})"
    return Aggregates(
        images=len(frame), size_bins=size_bins, hours=per_hour, formats=formats, faces=faces, faces_many=many,
        faces_max=top, modified=(float(stamps.min()), float(stamps.max())) if len(stamps) else None,
        size_total_kb=float(sizes.sum()) if len(sizes) else 0.0, size_total_images=len(sizes),
        source=chart, method="documents", size_total_source=chart,
        chart_sources={name: chart for name in ("size_distribution", "processing_hours", "formats", "faces")})


def _empty(source: str, method: str) -> Aggregates:
    return Aggregates(0, {}, {h: 0 for h in range(24)}, {}, {}, 0, None, None, 0.0, 0, source, method)


# --- from MeiliSearch facets ---------------------------------------------------------------------

def from_index(settings: Settings, index: str) -> Aggregates | None:
    """The counts of the index from MeiliSearch facets, with the search-only key; None when the
    index does not exist. Raises FacetsUnavailable when the index cannot count these fields, and
    MeiliError when MeiliSearch fails."""
    try:
        first = meili.facet_counts(settings, index, INDEX_FACETS)
    except meili.MeiliError as exc:
        if exc.kind == NOT_FOUND:
            return None
        if exc.code in ("invalid_search_facets", "invalid_search_filter"):
            raise FacetsUnavailable(exc.message) from None
        raise
    where = f"MeiliSearch facets of index {index!r}"
    images = first.total("bucket")
    size_bins = dict(sorted((float(k), int(v)) for k, v in first.counts("size_bin_kb").items()))
    hours = {h: 0 for h in range(24)}
    for hour, n in first.counts("processed_hour").items():
        hours[int(float(hour))] = int(n)
    formats = _ordered_formats({str(k): int(v) for k, v in first.counts("format").items()})

    face_stats = first.stats.get("faces")
    top = int(face_stats["max"]) if face_stats else None
    faces_source = f"{where}: faces"
    if top is not None and top >= MAX_FACE_BAR:
        # The values at and above the bar may be many: read below it, count above it.
        below = meili.facet_counts(settings, index, ["faces"], f"faces < {MAX_FACE_BAR}")
        many = meili.facet_counts(settings, index, ["bucket"], f"faces >= {MAX_FACE_BAR}").total("bucket")
        counts = below.counts("faces")
        faces_source += f" below {MAX_FACE_BAR}, and a count of faces >= {MAX_FACE_BAR}"
    else:
        counts, many = first.counts("faces"), 0
    faces = dict(sorted((int(float(k)), int(v)) for k, v in counts.items()))
    stamps = first.stats.get("timestamp")

    notes = []
    for facet in ("bucket", "format"):
        if len(first.counts(facet)) >= FACET_LIMIT:
            notes.append(f"MeiliSearch returned {len(first.counts(facet))} values of {facet}, as many as a facet "
                         "may: some may be left out (raise faceting.maxValuesPerFacet in INDEX_SETTINGS)")
    for name, counted, chart in (("size_bin_kb", sum(size_bins.values()), "size"),
                                 ("processed_hour", sum(hours.values()), "processing-hour")):
        if counted < images:
            notes.append(f"{images - counted:,} of {images:,} documents have no {name} (indexed by an older "
                         f"consumer): the {chart} chart leaves them out until they are processed again; "
                         "--all-documents counts them")
    return Aggregates(
        images=images, size_bins=size_bins, hours=hours, formats=formats, faces=faces, faces_many=many,
        faces_max=top, modified=(float(stamps["min"]), float(stamps["max"])) if stamps else None,
        size_total_kb=None, size_total_images=0, source=where, method="facets",
        chart_sources={"size_distribution": f"{where}: size_bin_kb", "processing_hours": f"{where}: processed_hour",
                       "formats": f"{where}: format", "faces": faces_source},
        notes=notes)


def with_mapreduce(aggregates: Aggregates, summary) -> Aggregates:
    """The exact total size from the MapReduce output (visualize.mapreduce_output.Summary) when
    the counts lack it and the output counts the same number of images as the index."""
    if aggregates.size_total_kb is not None or summary is None or summary.frame.empty:
        return aggregates
    rows = summary.frame[summary.frame["dimension"] == "format"]
    counted = int(rows["count"].sum())
    if rows.empty or rows["total_kb"].isna().any():
        return aggregates
    if counted != aggregates.images:
        return replace(aggregates, notes=aggregates.notes + [
            f"the MapReduce output in {summary.source} counts {counted:,} images and the index {aggregates.images:,}: "
            "its sizes are left out of the totals (export and run the job again for exact ones)"])
    return replace(aggregates, size_total_kb=float(rows["total_kb"].sum()), size_total_images=counted,
                   size_total_source=f"MapReduce output {summary.source}")


def top_documents(settings: Settings, index: str, sort: str, limit: int, filter_: str | None = None) -> list[dict]:
    """The first `limit` documents by `sort` (at most maxTotalHits, 1000), by one search. A field
    that is not sortable in the index is the user's to fix."""
    from imgpipe.errors import UserError

    params: dict = {"limit": min(limit, meili.PAGE_SIZE), "sort": [sort if ":" in sort else f"{sort}:asc"]}
    if filter_:
        params["filter"] = filter_
    try:
        return meili.search(settings, index, "", params, operation="reading the first documents of")["hits"]
    except meili.MeiliError as exc:
        if exc.code == "invalid_search_sort":
            raise UserError(f"invalid sort: {exc.message} (--all-documents sorts by any field, reading every "
                            "document)") from None
        raise meili.as_user_error(exc) from None
