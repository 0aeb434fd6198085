"""Charts built from data: each function takes the documents (or the MapReduce summary) and
returns a `Chart` holding the figure and the exact numbers drawn, so tests can check both.

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
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from visualize.mapreduce_output import dimensions, ordered  # noqa: E402

DPI = 100
SIZE = (9.0, 5.0)  # inches: 900 x 500 pixels at DPI
BAR = "#3b75af"
MAX_FACE_BAR = 10  # faces above this share one "10+" bar
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


def size_bins(sizes: np.ndarray) -> tuple[np.ndarray, bool]:
    """(bin edges in KiB, logarithmic?). Image sizes span orders of magnitude: past a 50x
    range, equal-width bins would put nearly everything in the first bar."""
    low, high = float(sizes.min()), float(sizes.max())
    if high <= low:
        return np.array([low - 0.5, high + 0.5]) if low >= 0.5 else np.array([0.0, high + 1.0]), False
    count = int(min(40, max(8, math.ceil(math.sqrt(len(sizes))))))
    if low > 0 and high / low > 50:
        return np.geomspace(low, high, count + 1), True
    edges = np.histogram_bin_edges(sizes, bins="auto")
    if len(edges) - 1 > 40:
        edges = np.linspace(low, high, 41)
    return edges, False


def size_histogram(frame) -> Chart:
    """Image size distribution. data: one row per bin (from_kb, to_kb, images)."""
    sizes = frame["size_kb"].dropna().to_numpy(dtype=float)
    fig = _figure()
    ax = fig.add_subplot()
    if len(sizes) == 0:
        data = pd.DataFrame(columns=["from_kb", "to_kb", "images"])
        _no_data(ax)
        log_scale = False
    else:
        edges, log_scale = size_bins(sizes)
        counts, edges = np.histogram(sizes, bins=edges)
        data = pd.DataFrame({"from_kb": edges[:-1], "to_kb": edges[1:], "images": counts})
        ax.hist(sizes, bins=edges, color=BAR, edgecolor="white", linewidth=0.6)
        median = float(np.median(sizes))
        ax.axvline(median, color="#d1495b", linestyle="--", linewidth=1.5,
                   label=f"median {median:,.1f} KiB")
        ax.legend(frameon=False)
        if log_scale:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    _style(ax, f"Image size distribution ({_images(len(sizes))})",
           "Image size (KiB" + (", log scale)" if log_scale else ")"), "Images (count)")
    return Chart("size_distribution", fig, data)


def hour_distribution(frame) -> Chart:
    """Images processed per hour of the day (UTC). data: Series hour 0..23 -> images."""
    times = pd.to_datetime(frame["processed_at"], utc=True, errors="coerce", format="ISO8601").dropna()
    data = times.dt.hour.value_counts().reindex(range(24), fill_value=0).rename("images")
    data.index.name = "hour"
    fig = _figure()
    ax = fig.add_subplot()
    bars = ax.bar(data.index, data.to_numpy(), color=BAR, width=0.8)
    _label_bars(ax, bars, data.to_numpy())
    ax.set_xticks(range(24), [f"{h:02d}" for h in range(24)])
    ax.set_xlim(-0.7, 23.7)
    _style(ax, f"Processing hour distribution ({_images(int(data.sum()))})", "Hour of day (UTC)",
           "Images processed (count)")
    return Chart("processing_hours", fig, data)


def format_breakdown(frame) -> Chart:
    """Images per format, most common first. data: Series format -> images."""
    data = frame["format"].dropna().astype(str).value_counts().rename("images")
    data.index.name = "format"
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
    return Chart("formats", fig, data)


def face_distribution(frame) -> Chart:
    """Images per number of detected faces. data: Series with labels "0", "1", ... "10+"."""
    faces = frame["faces"].dropna().astype(int)
    top = min(int(faces.max()) if len(faces) else 0, MAX_FACE_BAR)
    labels = [str(n) for n in range(top + 1)]
    counts = [int((faces == n).sum()) for n in range(top + 1)]
    if len(faces) and faces.max() >= MAX_FACE_BAR:
        labels[-1] = f"{MAX_FACE_BAR}+"
        counts[-1] = int((faces >= MAX_FACE_BAR).sum())
    data = pd.Series(counts, index=pd.Index(labels, name="faces"), name="images")
    fig = _figure()
    ax = fig.add_subplot()
    if faces.empty:
        _no_data(ax)
    else:
        bars = ax.bar(labels, counts, color=BAR, width=0.7)
        _label_bars(ax, bars, counts)
        _room_for(ax, len(labels))
    _style(ax, f"Face count distribution ({_images(len(faces))})", "Faces detected per image",
           "Images (count)")
    return Chart("faces", fig, data)


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
