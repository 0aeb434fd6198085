"""The dashboard's pages. Each builds a plain dict of what it shows; `show` renders it with its
template, or returns it as JSON for `?format=json`."""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request, url_for

from imgpipe import meili, s3
from imgpipe.document import FIELDS, INDEX_SETTINGS
from imgpipe.errors import NOT_FOUND, UNAVAILABLE, UserError
from imgpipe.settings import Settings

blueprint = Blueprint("pages", __name__)

DOCUMENT_ID = re.compile(r"[0-9a-f]{64}")
DERIVED = {"thumbnail": "thumbnail_key", "grayscale": "grayscale_key"}
MAX_DERIVED_BYTES = 20 * 1024 * 1024
SIMILAR = 8
SORTS = [f"{name}:{way}" for name in INDEX_SETTINGS["sortableAttributes"] for way in ("desc", "asc")]
CARD_FIELDS = ["id", "file_name", "size_kb", "format", "width", "height", "faces", "timestamp", "text_chars"]


@dataclass
class Context:
    """What every request of one app shares: settings (never handed to a template), options, the
    status tracker, an S3 client and the facet counts of the last few seconds."""

    settings: Settings
    options: object  # visualize.web.Options
    status: object  # visualize.web.status.StatusTracker
    _s3: object = None
    _counts: tuple[float, object] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def s3(self):
        with self._lock:
            if self._s3 is None:
                self._s3 = s3.client(self.settings)
            return self._s3

    def counts(self):
        """visualize.aggregates.Aggregates of the index (with the MapReduce output's sizes), None
        when the index does not exist; the same ones for counts_ttl_seconds."""
        from visualize.aggregates import from_index, with_mapreduce
        from visualize.mapreduce_output import read_summary

        with self._lock:
            if self._counts and time.monotonic() - self._counts[0] < self.options.counts_ttl_seconds:
                return self._counts[1]
        counts = from_index(self.settings, self.settings.meili_index)
        if counts is not None:
            counts = with_mapreduce(counts, read_summary(self.options.mapreduce_dir))
        with self._lock:
            self._counts = (time.monotonic(), counts)
        return counts


def context() -> Context:
    return current_app.extensions["imgpipe"]


def show(template: str, data: dict, status: int = 200):
    if request.args.get("format") == "json":
        return jsonify(data), status
    return render_template(template, **data, index=context().settings.meili_index), status


def _search(params: dict, query: str = "") -> dict:
    settings = context().settings
    try:
        return meili.search(settings, settings.meili_index, query, params)
    except meili.MeiliError as exc:
        raise meili.as_user_error(exc) from None


def find_document(doc_id: str, fields: list[str] | None = None) -> dict | None:
    """One document by id (a hex sha256: anything else is no document), or None."""
    if not DOCUMENT_ID.fullmatch(doc_id):
        return None
    params: dict = {"filter": f'id = "{doc_id}"', "limit": 1}
    if fields:
        params["attributesToRetrieve"] = fields
    hits = _search(params)["hits"]
    return hits[0] if hits else None


def card(hit: dict) -> dict:
    from visualize.tables import utc_time

    shown = {name: hit.get(name) for name in CARD_FIELDS}
    shown["modified"] = utc_time(hit.get("timestamp"))
    shown["thumbnail"] = url_for("pages.derived", doc_id=hit["id"], kind="thumbnail")
    shown["page"] = url_for("pages.image", doc_id=hit["id"])
    if "_rankingScore" in hit:
        shown["likeness"] = round(hit["_rankingScore"], 3)
    from visualize.search import matching_lines

    lines = matching_lines(hit)
    if lines:  # the query matched words read inside the image: the line, its words marked
        shown["text_match"] = lines[0][1]
    return shown


# --- search ---------------------------------------------------------------------------------------

@blueprint.get("/")
def search():
    ctx = context()
    size = ctx.options.page_size
    query = request.args.get("q", "")[:500]
    user_filter = request.args.get("filter", "").strip()[:2000]
    image_format = request.args.get("image_format", "")
    sort = request.args.get("sort", "timestamp:desc")
    try:
        page = int(request.args.get("page", "1"))
    except ValueError:
        raise UserError("page must be a whole number") from None
    if sort and sort not in SORTS:
        raise UserError(f"cannot sort by {sort!r}: choose one of {', '.join(SORTS)}, or relevance")
    if page < 1 or page * size > meili.PAGE_SIZE:
        raise UserError(f"page must be between 1 and {meili.PAGE_SIZE // size}: MeiliSearch returns the first "
                        f"{meili.PAGE_SIZE:,} hits of a search at most (narrow it with a filter)")
    counts = ctx.counts()
    formats = list(counts.formats) if counts else []
    if image_format and image_format not in formats:
        raise UserError(f"no image has the format {image_format!r}")
    params = {"limit": size, "offset": (page - 1) * size, "attributesToRetrieve": CARD_FIELDS}
    if query:
        from visualize.search import MATCH_END, MATCH_START

        params.update({"attributesToHighlight": ["text"], "highlightPreTag": MATCH_START,
                       "highlightPostTag": MATCH_END})
    if image_format:  # the user's filter in brackets, so its OR cannot swallow the format
        params["filter"] = " AND ".join([*([f"({user_filter})"] if user_filter else []),
                                         f"format = {json.dumps(image_format)}"])
    elif user_filter:
        params["filter"] = user_filter
    if sort:
        params["sort"] = [sort]
    if counts is None:
        hits, found, took = [], 0, 0
    else:
        response = _search(params, query)
        hits, found, took = response["hits"], response.get("estimatedTotalHits", 0), response.get("processingTimeMs")
    return show("search.html", {
        "query": query, "filter": user_filter, "image_format": image_format, "sort": sort, "page": page,
        "sorts": SORTS, "formats": formats, "hits": [card(h) for h in hits], "estimated_total_hits": found,
        "processing_ms": took, "index_exists": counts is not None,
        "more": page * size < min(found, meili.PAGE_SIZE)})


# --- one image ------------------------------------------------------------------------------------

def similar_to(doc: dict) -> tuple[list[dict], str]:
    """(look-alikes best first, or a message saying why there are none)."""
    from visualize.search import run_similar

    params = {"limit": SIMILAR, "attributesToRetrieve": CARD_FIELDS}
    try:
        hits = run_similar(context().settings, doc["key"], doc["bucket"], params)["hits"]
    except UserError as exc:
        return [], str(exc)
    except meili.MeiliError as exc:
        if exc.kind == UNAVAILABLE:
            raise
        return [], f"no look-alikes: {exc}"
    return [card(h) for h in hits], "" if hits else "no image in the index looks like this one"


@blueprint.get("/image/<doc_id>")
def image(doc_id: str):
    doc = find_document(doc_id)
    if doc is None:
        abort(404, description="no image with this id in the index")
    extra = sorted(k for k in doc if k not in FIELDS and not k.startswith("_"))
    similar, why_none = similar_to(doc)
    return show("image.html", {
        "document": {name: doc.get(name) for name in [*FIELDS, *extra]}, "id": doc_id,
        "file_name": doc.get("file_name") or doc.get("key") or doc_id,
        "thumbnail": url_for("pages.derived", doc_id=doc_id, kind="thumbnail"),
        "grayscale": url_for("pages.derived", doc_id=doc_id, kind="grayscale"),
        "similar": similar, "similar_message": why_none,
        # The enricher's: boxes as fractions of the upright image, so they fit the thumbnail.
        "face_boxes": _boxes(doc.get("face_boxes")), "text_lines": _lines(doc.get("text_lines"))})


def _boxes(boxes) -> list[dict]:
    shown = []
    for box in boxes if isinstance(boxes, list) else []:
        try:
            shown.append({k: round(float(box[k]), 4) for k in ("x", "y", "w", "h", "confidence")})
        except (TypeError, KeyError, ValueError):
            continue  # not the enricher's shape: the fields table still shows it
    return shown


def _lines(lines) -> list[dict]:
    shown = []
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, dict) and isinstance(line.get("text"), str):
            shown.append({"text": line["text"], "confidence": line.get("confidence")})
    return shown


def servable(key, prefix: str) -> bool:
    """A derived image's key: under S3_PROCESSED_PREFIX, and no segment a file-backed S3 server
    could read as a step up or sideways."""
    if not isinstance(key, str) or not key.startswith(prefix) or len(key.encode()) > 1024:
        return False
    return all(part not in ("", ".", "..") for part in key[len(prefix):].split("/"))


@blueprint.get("/image/<doc_id>/<kind>.jpg")
def derived(doc_id: str, kind: str):
    """The thumbnail or grayscale version of an indexed document, read from S3 by its document's
    own key: the browser names a document, never a key."""
    ctx = context()
    if kind not in DERIVED:
        abort(404)
    doc = find_document(doc_id, [DERIVED[kind]])
    key = doc.get(DERIVED[kind]) if doc else None
    if not servable(key, ctx.settings.s3_processed_prefix):
        abort(404, description=f"no {kind} for this id")
    try:
        data = s3.fetch(ctx.s3(), ctx.settings.s3_bucket, key, max_bytes=MAX_DERIVED_BYTES).data
    except s3.ObjectTooLarge:
        abort(404, description=f"the {kind} is too large to serve")
    except s3.S3Error as exc:
        if exc.kind == NOT_FOUND:
            abort(404, description=f"the {kind} is not in S3")
        raise
    if not data.startswith(b"\xff\xd8\xff"):
        abort(404, description=f"the {kind} is not a JPEG")
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


# --- charts and totals ----------------------------------------------------------------------------

CHARTS = {"size_distribution": "Image sizes", "processing_hours": "Processing hours", "formats": "Formats",
          "faces": "Faces", "mapreduce_summary": "MapReduce summary"}


def _summary():
    from visualize.mapreduce_output import read_summary

    return read_summary(context().options.mapreduce_dir)


@blueprint.get("/charts")
def charts_page():
    from visualize.aggregates import FacetsUnavailable
    from visualize.tables import totals
    from visualize.report import dead_lettered_count

    ctx = context()
    try:
        counts = ctx.counts()
    except FacetsUnavailable as exc:
        raise UserError(f"index {ctx.settings.meili_index!r} cannot be counted with facets ({exc}): the consumer "
                        "applies the index settings when it starts") from None
    if counts is None:
        return show("charts.html", {"index_exists": False, "charts": [], "totals": [], "notes": []})
    summary = _summary()
    names = [n for n in CHARTS if n != "mapreduce_summary" or summary is not None]
    return show("charts.html", {
        "index_exists": True, "images": counts.images, "counts": counts.as_json(),
        "totals": totals(counts, dead_lettered_count(None, ctx.options.consumer_summary)),
        "sizes_from": counts.size_total_source or "bounds from the size bins",
        "notes": counts.notes,
        "charts": [{"name": n, "title": CHARTS[n], "png": url_for("pages.chart_png", name=n),
                    "source": counts.chart_sources.get(n) or (f"MapReduce output {summary.source}" if summary else "")}
                   for n in names]})


@blueprint.get("/charts/<name>.png")
def chart_png(name: str):
    """The very charts report.py writes, from the same counts, rendered in memory."""
    from visualize import charts

    if name not in CHARTS:
        abort(404)
    if name == "mapreduce_summary":
        summary = _summary()
        if summary is None:
            abort(404, description="no MapReduce output")
        chart = charts.mapreduce_summary(summary.frame)
    else:
        counts = context().counts()
        if counts is None:
            abort(404, description="the index does not exist yet")
        chart = {c.name: c for c in charts.distribution_charts(counts)}[name]
    return Response(charts.png_bytes(chart), mimetype="image/png", headers={"Cache-Control": "no-store"})


# --- dead letters ----------------------------------------------------------------------------------

# How long the page waits for the next dead letter before it gives up with a 503 (a busy broker's
# first fetch can take seconds; an unreachable one fails sooner, when the watermarks are asked).
DEAD_LETTERS_READ_SECONDS = 15.0


@blueprint.get("/dead-letters")
def dead_letters():
    from imgpipe import deadletters, kafka

    ctx = context()
    most = ctx.options.dead_letters
    try:
        limit = int(request.args.get("limit", most))
    except ValueError:
        raise UserError("limit must be a whole number") from None
    if not 1 <= limit <= most:
        raise UserError(f"limit must be between 1 and {most}")
    topic = ctx.settings.kafka_dead_letter_topic
    try:
        letters = deadletters.read_latest(ctx.settings, limit, timeout=DEAD_LETTERS_READ_SECONDS)
    except kafka.KafkaError as exc:
        if exc.kind != NOT_FOUND:
            raise
        letters = None
    rows = [{"failed_at": letter.headers.get(deadletters.FAILED_AT, ""), "stage": letter.stage, "reason": letter.reason,
             "key": letter.object_key or (letter.key or b"").decode("utf-8", "replace"),
             "error_class": letter.headers.get(deadletters.ERROR_CLASS, ""),
             "attempts": letter.headers.get(deadletters.ATTEMPTS, ""),
             "position": f"{letter.partition}@{letter.offset}", "cut": letter.cut}
            for letter in letters or []]
    stages: dict[str, int] = {}
    for row in rows:
        stages[row["stage"]] = stages.get(row["stage"], 0) + 1
    return show("dead_letters.html", {"topic": topic, "topic_exists": letters is not None, "limit": limit,
                                      "dead_letters": rows, "stages": stages})


# --- the consumer's status -----------------------------------------------------------------------

@blueprint.get("/status")
def status():
    from dataclasses import asdict

    ctx = context()
    endpoints = ctx.status.read(ctx.options.metrics_urls)
    return show("status.html", {"metrics_urls": list(ctx.options.metrics_urls),
                                "endpoints": [{**asdict(e), "total_lag": e.total_lag} for e in endpoints]})
