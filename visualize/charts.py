"""Charts built from data: each function takes the counts (visualize.aggregates, from MeiliSearch
facets or from documents) or the MapReduce summary and returns a `Chart` holding the figure and
the exact numbers drawn, so tests can check both.

Figures are `matplotlib.figure.Figure` objects, not pyplot ones: no global state, nothing to
close, and no display needed (the Agg backend renders them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from imgpipe.document import SIZE_BIN_EDGES_KB  # noqa: E402
from visualize.aggregates import MAX_FACE_BAR, Aggregates, upper_edge  # noqa: E402
from visualize.mapreduce_output import dimensions, ordered  # noqa: E402

DPI = 100
SIZE = (9.0, 5.0)  # inches: 900 x 500 pixels at DPI
BAR = "#3b75af"
MEDIAN = "#d1495b"
MAX_DAYS = 31  # the MapReduce chart shows the latest days only


@dataclass
class Chart:
    name: str  # file stem: out/<name>.png
    figure: Figure
    data: pd.Series | pd.DataFrame  # what the chart draws


def _images(n: int) -> str:
    return f"{n:,} image" if n == 1 else f"{n:,} images"


def _figure(size=SIZE) -> Figure:
    return Figure(figsize=size, dpi=DPI, layout="constrained")


def _style(ax, title: str, xlabel: str, ylabel: str, counts_on: str = "y") -> None:
    ax.set_title(title, fontsize=13, pad=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    counts_axis = ax.yaxis if counts_on == "y" else ax.xaxis
    counts_axis.set_major_locator(MaxNLocator(integer=True))
    counts_axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.grid(axis=counts_on, alpha=0.3)
    ax.set_axisbelow(True)


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=14, color="0.5")
    ax.tick_params(labelbottom=False, labelleft=False, length=0)


def _room_for(ax, bars: int, slots: int = 6, axis: str = "x") -> None:
    """Keep bars bar-shaped: a single category must not stretch across the whole chart."""
    pad = max(0.0, (slots - bars) / 2)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(-0.6 - pad, bars - 0.4 + pad)


def _label_bars(ax, bars, values) -> None:
    """Counts above the bars, when there are few enough bars to read them."""
    if len(values) <= 30:
        ax.bar_label(bars, labels=[f"{int(v):,}" if v else "" for v in values], padding=2, fontsize=8)
        ax.margins(y=0.12)


def _source(fig, text: str) -> None:
    """Where the numbers come from, in small print at the bottom right."""
    if text:
        # Constrained layout leaves the bottom 3% to the note, so it never covers an axis label.
        fig.get_layout_engine().set(rect=(0, 0.03, 1, 0.97))
        fig.text(0.995, 0.005, f"numbers: {text}", ha="right", va="bottom", fontsize=7, color="0.45")


def size_histogram(aggregates: Aggregates) -> Chart:
    """Image size distribution over the fixed bins of imgpipe.document.SIZE_BIN_EDGES_KB (ten
    per decade, equal widths on the log axis), from the first bin that holds an image to the
    last. data: one row per bin (from_kb, to_kb, images)."""
    fig = _figure()
    ax = fig.add_subplot()
    held = aggregates.size_bins
    if not held:
        data = pd.DataFrame(columns=["from_kb", "to_kb", "images"])
        _no_data(ax)
    else:
        first, last = SIZE_BIN_EDGES_KB.index(min(held)), SIZE_BIN_EDGES_KB.index(max(held))
        edges = SIZE_BIN_EDGES_KB[first:last + 1]
        data = pd.DataFrame({"from_kb": list(edges), "to_kb": [upper_edge(e) for e in edges],
                             "images": [held.get(e, 0) for e in edges]})
        # The bin at 0 (under 0.01 KiB) is drawn one bin wide: a log axis has no 0.
        left = [e if e > 0 else upper_edge(e) / 1.25 for e in edges]
        widths = [upper_edge(e) - x for e, x in zip(edges, left)]
        counts = data["images"].to_numpy()
        median = _median_bin(counts)
        colours = [MEDIAN if i == median else BAR for i in range(len(counts))]
        ax.bar(left, counts, width=widths, align="edge", color=colours, edgecolor="white", linewidth=0.6)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        low, high = data.iloc[median][["from_kb", "to_kb"]]
        ax.legend(handles=[Patch(color=MEDIAN, label=f"median in {low:,g}–{high:,g} KiB")], frameon=False)
    _style(ax, f"Image size distribution ({_images(int(data['images'].sum()))})",
           "Image size (KiB, log scale, 10 bins per decade)", "Images (count)")
    _source(fig, aggregates.chart_sources.get("size_distribution", ""))
    return Chart("size_distribution", fig, data)


def _median_bin(counts) -> int:
    """Index of the bin holding the median image (the lower middle one of an even count)."""
    return int(np.searchsorted(np.cumsum(counts), (int(np.sum(counts)) + 1) // 2))


def hour_distribution(aggregates: Aggregates) -> Chart:
    """Images processed per hour of the day (UTC). data: Series hour 0..23 -> images."""
    data = pd.Series([aggregates.hours.get(h, 0) for h in range(24)], index=pd.RangeIndex(24, name="hour"),
                     name="images", dtype="int64")
    fig = _figure()
    ax = fig.add_subplot()
    bars = ax.bar(data.index, data.to_numpy(), color=BAR, width=0.8)
    _label_bars(ax, bars, data.to_numpy())
    ax.set_xticks(range(24), [f"{h:02d}" for h in range(24)])
    ax.set_xlim(-0.7, 23.7)
    _style(ax, f"Processing hour distribution ({_images(int(data.sum()))})", "Hour of day (UTC)",
           "Images processed (count)")
    _source(fig, aggregates.chart_sources.get("processing_hours", ""))
    return Chart("processing_hours", fig, data)


def format_breakdown(aggregates: Aggregates) -> Chart:
    """Images per format, most common first. data: Series format -> images."""
    data = pd.Series(list(aggregates.formats.values()), index=pd.Index(list(aggregates.formats), name="format"),
                     name="images", dtype="int64")
    fig = _figure()
    ax = fig.add_subplot()
    if data.empty:
        _no_data(ax)
    else:
        total = int(data.sum())
        # Horizontal bars, largest on top: format names stay horizontal and readable.
        bars = ax.barh(data.index[::-1], data.to_numpy()[::-1], color=BAR, height=0.6)
        ax.bar_label(bars, labels=[f"{v:,} ({v / total:.0%})" for v in data.to_numpy()[::-1]], padding=3,
                     fontsize=9)
        ax.margins(x=0.15)
        _room_for(ax, len(data), slots=4, axis="y")
    _style(ax, f"Format breakdown ({_images(int(data.sum()))})", "Images (count)", "Format", counts_on="x")
    _source(fig, aggregates.chart_sources.get("formats", ""))
    return Chart("formats", fig, data)


def face_distribution(aggregates: Aggregates) -> Chart:
    """Images per number of detected faces. data: Series with labels "0", "1", ... "10+"."""
    counted = aggregates.faces_counted
    top = min(aggregates.faces_max if aggregates.faces_max is not None else 0, MAX_FACE_BAR)
    labels = [str(n) for n in range(top + 1)]
    counts = [aggregates.faces.get(n, 0) for n in range(top + 1)]
    if aggregates.faces_many:
        labels[-1] = f"{MAX_FACE_BAR}+"
        counts[-1] = aggregates.faces_many
    data = pd.Series(counts, index=pd.Index(labels, name="faces"), name="images", dtype="int64")
    fig = _figure()
    ax = fig.add_subplot()
    if not counted:
        _no_data(ax)
    else:
        bars = ax.bar(labels, counts, color=BAR, width=0.7)
        _label_bars(ax, bars, counts)
        _room_for(ax, len(labels))
    _style(ax, f"Face count distribution ({_images(counted)})", "Faces detected per image", "Images (count)")
    _source(fig, aggregates.chart_sources.get("faces", ""))
    return Chart("faces", fig, data)


def distribution_charts(aggregates: Aggregates) -> list[Chart]:
    """The four charts of the counts, in the order report.py writes them."""
    return [size_histogram(aggregates), hour_distribution(aggregates), format_breakdown(aggregates),
            face_distribution(aggregates)]


def png_bytes(chart: Chart) -> bytes:
    """The chart as PNG bytes, rendered in memory (what the dashboard serves)."""
    import io

    buffer = io.BytesIO()
    chart.figure.savefig(buffer, format="png", dpi=chart.figure.dpi)
    return buffer.getvalue()


_AXIS_LABELS = {"format": "Format", "hour": "Hour of day (UTC)", "day": "Day (UTC)",
                "size_bucket": "Size bucket", "faces": "Faces detected per image"}


def _all_hours(rows):
    """Hours 00-23 with zero rows for the hours that had no image, so gaps show as gaps."""
    try:
        present = {int(v): v for v in rows["value"]}
    except ValueError:  # not hour numbers after all: draw them as they are
        return rows
    if not set(present) <= set(range(24)):
        return rows
    missing = [{"dimension": "hour", "value": f"{h:02d}", "count": 0} for h in range(24) if h not in present]
    return ordered(pd.concat([rows, pd.DataFrame(missing, columns=rows.columns)], ignore_index=True)
                   .astype({"count": int}))


def mapreduce_summary(frame) -> Chart:
    """One panel of image counts per summary dimension. data: the rows drawn
    (dimension, value, count, ...) in display order; `day` limited to the latest MAX_DAYS."""
    panels = []
    for name in (dimensions(frame) if len(frame) else []):
        rows = ordered(frame[frame["dimension"] == name])
        if name == "hour":
            rows = _all_hours(rows)
        panels.append((name, rows.tail(MAX_DAYS) if name == "day" else rows))
    # Two columns of panels; the day-by-day panel (many bars) and an odd last one span both.
    narrow = [p for p in panels if p[0] != "day"]
    wide = [p for p in panels if p[0] == "day"]
    columns = 2 if len(narrow) > 1 else 1
    cells = []
    for i in range(len(narrow)):
        alone = columns == 1 or (i == len(narrow) - 1 and i % 2 == 0)
        cells.append((i // columns, slice(None) if alone else slice(i % 2, i % 2 + 1)))
    first_wide = math.ceil(len(narrow) / columns)
    cells += [(first_wide + j, slice(None)) for j in range(len(wide))]
    panels = narrow + wide
    grid_rows = cells[-1][0] + 1 if cells else 1
    fig = _figure((SIZE[0] * (1.45 if columns == 2 else 1), 3.6 * grid_rows + 0.6))
    fig.suptitle("MapReduce summary: images per dimension", fontsize=14)
    if not panels:
        _no_data(fig.add_subplot())
        return Chart("mapreduce_summary", fig, frame.iloc[0:0])
    grid = fig.add_gridspec(grid_rows, columns)
    for (name, rows), (r, cols) in zip(panels, cells):
        ax = fig.add_subplot(grid[r, cols])
        labels = [str(v) for v in rows["value"]]
        counts = rows["count"].to_numpy()
        bars = ax.bar(range(len(labels)), counts, color=BAR, width=0.75)
        _label_bars(ax, bars, counts)
        _room_for(ax, len(labels))
        xlabel = _AXIS_LABELS.get(name, name.replace("_", " ").capitalize())
        if name == "day":
            # Dates as MM-DD with the year in the axis label: full dates collide.
            years = sorted({label[:4] for label in labels})
            labels = [label[5:] if len(label) >= 10 else label for label in labels]
            xlabel = f"Day (UTC, {years[0] if len(years) == 1 else years[0] + '–' + years[-1]})"
        ax.set_xticks(range(len(labels)), labels)
        if len(labels) > 12:
            ax.tick_params(axis="x", labelsize=8)
        # About 12 characters of 8-point text fit in an inch: past that, labels would touch.
        inches = fig.get_figwidth() * (1 if cols == slice(None) else 0.5)
        if sum(len(t) + 1 for t in labels) > inches * 12:
            ax.tick_params(axis="x", labelrotation=45)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")
                tick.set_rotation_mode("anchor")
        _style(ax, f"by {name.replace('_', ' ')} ({_images(int(counts.sum()))})", xlabel, "Images (count)")
        ax.title.set_fontsize(11)
    data = pd.concat([rows for _, rows in panels], ignore_index=True)
    return Chart("mapreduce_summary", fig, data)
