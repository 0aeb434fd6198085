"""A benchmark figure, its floor and its target; the table and the JSON they make.

A figure is judged by `ratio` = value / floor, both measured in the same run on the same
machine, so a slow or busy machine moves both and the ratio still means something. Figures
without a floor (latency, memory) are judged by their value.
"""
from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from pathlib import Path

# Figure names in the order of the issue: the table and results.json list them this way.
FIGURE_ORDER = (
    "decode_floor", "processing_floor",
    "pipeline_1_worker", "pipeline_2_workers", "latency_p50", "latency_p95", "latency_upload_p50",
    "latency_upload_p95", "seed_design", "pipeline_vs_seed", "consumer_startup", "cores_busy", "consumer_cpu_per_image",
    "indexing_batched", "producer", "mapreduce_pipe", "mapreduce_hadoop",
    "mapreduce_duplicates", "duplicates_precision", "duplicates_recall", "consumer_peak_rss_mb",
    "visualize_100k", "visualize_100k_peak_rss_mb", "visualize_1m", "visualize_1m_peak_rss_mb",
    "faces_recall_40px", "faces_false_per_1000", "faces_cpu_ms", "ocr_cer_16px", "ocr_cer_12px", "ocr_cer_captcha",
    "enricher_faces", "enricher_text",
    "sizing_images_per_core", "meilisearch_indexing_ceiling", "sizing_fleet_limit_c7i_large",
)

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Target:
    """`of` ("ratio" or "value") `op` `threshold`, e.g. ratio >= 0.85."""

    of: str
    op: str
    threshold: float

    def text(self, unit: str = "") -> str:
        suffix = f" {unit}" if self.of == "value" and unit else ""
        return f"{self.op} {self.threshold:g}{suffix}"

    def met(self, figure: "Figure") -> bool | None:
        subject = figure.ratio if self.of == "ratio" else figure.value
        return None if subject is None else bool(_OPS[self.op](subject, self.threshold))


# The targets of the issue. Reported, never asserted by the tests.
TARGETS: dict[str, Target] = {
    "processing_floor": Target("ratio", ">=", 0.5),
    "pipeline_1_worker": Target("ratio", ">=", 0.85),
    "pipeline_2_workers": Target("ratio", ">=", 0.85),
    "latency_p95": Target("value", "<=", 1.0),
    # Both consumers in their default configuration, timed from process start until the last
    # document is searchable (group join, worker start and the last commit included).
    "pipeline_vs_seed": Target("ratio", ">=", 2.0),
    "consumer_startup": Target("value", "<", 2.0),
    # PUT on the real S3 server -> searchable, through its notifications in Kafka (issue 25).
    "latency_upload_p50": Target("value", "<=", 0.5),
    "latency_upload_p95": Target("value", "<=", 1.0),
    "cores_busy": Target("value", ">=", 1.8),
    "consumer_cpu_per_image": Target("ratio", "<=", 1.3),
    "indexing_batched": Target("ratio", ">=", 50),
    "producer": Target("ratio", ">=", 0.7),
    "consumer_peak_rss_mb": Target("value", "<", 400),
    # Ten times the documents: at most twice the time and 1.5 times the memory (issue 18).
    "visualize_1m": Target("ratio", "<=", 2.0),
    "visualize_1m_peak_rss_mb": Target("ratio", "<=", 1.5),
    # Issue 23: faces >= 40 px found at their box in >= 90 % of composites, fewer false faces than
    # Haar, CER <= 5 % on printed text >= 16 px, faces enrichment no dearer than core processing.
    "faces_recall_40px": Target("value", ">=", 0.9),
    "faces_false_per_1000": Target("ratio", "<", 1.0),
    "ocr_cer_16px": Target("value", "<=", 0.05),
    "enricher_faces": Target("ratio", ">=", 1.0),
}


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    floor: float | None = None
    floor_name: str = ""  # what the floor is, for the table ("decode_floor", "naive: 1 doc/request")
    detail: dict = field(default_factory=dict)  # how it was measured and what else was seen
    note: str = ""  # why a value is missing (skipped, failed)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.floor:
            return None
        return self.value / self.floor

    @property
    def target(self) -> Target | None:
        return TARGETS.get(self.name)

    def as_dict(self) -> dict:
        target = self.target
        result = {
            "name": self.name,
            "value": _round(self.value),
            "unit": self.unit,
            "floor": _round(self.floor),
            "ratio": _round(self.ratio, 3),
            "floor_is": self.floor_name or None,
            "target": target.text(self.unit) if target else None,
            "target_of": target.of if target else None,
            "met": target.met(self) if target else None,
        }
        if self.note:
            result["note"] = self.note
        if self.detail:
            result["detail"] = self.detail
        return result


def _round(value: float | None, digits: int = 2) -> float | None:
    if value is None:
        return None
    return round(value, digits) if abs(value) >= 1 else round(value, max(digits, 4))


def ordered(figures: list[Figure]) -> list[Figure]:
    """Figures in FIGURE_ORDER, unknown names after them in the order given."""
    rank = {name: i for i, name in enumerate(FIGURE_ORDER)}
    return sorted(figures, key=lambda f: rank.get(f.name, len(rank)))


def write_results(path: Path, figures: list[Figure]) -> None:
    """results.json: a list of figures (name, value, unit, floor, ratio, target, met, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([f.as_dict() for f in ordered(figures)], indent=2, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    tmp.replace(path)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def table(figures: list[Figure], fmt: str = "simple") -> str:
    """The printed table: one row per figure, target and whether it was met next to it."""
    from tabulate import tabulate

    rows = []
    for figure in ordered(figures):
        target = figure.target
        met = target.met(figure) if target else None
        rows.append((figure.name, _number(figure.value), figure.unit,
                     _number(figure.floor) + (f" ({figure.floor_name})" if figure.floor_name else "")
                     if figure.floor is not None else "-",
                     _number(figure.ratio),
                     (f"{target.of} {target.text(figure.unit)}" if target else ""),
                     {True: "yes", False: "NO", None: ("-" if target is None else "?")}[met]
                     + (f"  {figure.note}" if figure.note else "")))
    if fmt == "github":  # a | inside a cell would end it
        rows = [tuple(cell.replace("|", "\\|") for cell in row) for row in rows]
    return tabulate(rows, headers=["figure", "value", "unit", "floor", "ratio", "target", "met"],
                    tablefmt=fmt, disable_numparse=True)
