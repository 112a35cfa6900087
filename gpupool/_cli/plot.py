"""Drawing a `Timeline` (``gpupool._journal.timeline``) as PNG, SVG or HTML.

Thin on purpose: which attempt goes in which lane, row and colour was decided
by the pure timeline module; this one only draws it with matplotlib (the
extra ``plot``, imported when a picture is asked for), and, for SVG and
HTML, gives each bar a hover title (an SVG ``<title>``, which browsers show
as a tooltip: no script). The HTML page is that SVG inline with a heading,
one self-contained file.

The format is the output's extension (`format_of`); the file appears
complete or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import datetime
import html
import io
import math
import os
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from .._journal.timeline import Attempt, Bar, Outcome, Timeline, queue_depth
from .._system.files import atomic_file

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FORMATS", "MissingMatplotlib", "format_of", "render"]

#: The output formats, by file extension.
FORMATS = {".png": "png", ".svg": "svg", ".html": "html"}

INSTALL_HINT = "pip install 'gpupool[plot]'"

#: Bar colours by outcome (colour-blind-safe hues; running and interrupted also hatched).
COLOURS = {
    Outcome.SUCCEEDED: "#2e8b57",
    Outcome.RETRIED: "#e69f00",
    Outcome.FAILED: "#d55e00",
    Outcome.TIMED_OUT: "#cc79a7",
    Outcome.CANCELLED: "#999999",
    Outcome.INTERRUPTED: "#56606b",
    Outcome.RUNNING: "#0072b2",
}
_HATCHED = {Outcome.RUNNING: "//", Outcome.INTERRUPTED: "xx"}
# A hatch is drawn in the edge colour: a tint of the bar's own, so labels stay readable.
_HATCH_EDGE = {Outcome.RUNNING: "#4d9bd1", Outcome.INTERRUPTED: "#7d8793"}

_SVG_NS = "http://www.w3.org/2000/svg"
_SVG_PREFIXES = {
    "": _SVG_NS,
    "xlink": "http://www.w3.org/1999/xlink",
    "dc": "http://purl.org/dc/elements/1.1/",
    "cc": "http://creativecommons.org/ns#",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
_BAR_ID = "gpupool-bar-"
_LANE_GAP = 0.5  # between lanes, in rows
_BAR_HEIGHT = 0.8  # of a row
_ROW_INCHES = 0.32
_WIDTH_INCHES = 11.0


class MissingMatplotlib(Exception):
    """matplotlib is not installed: the message names the extra."""


def format_of(path: str) -> str:
    """The format an output path asks for, by its extension; `ValueError` for others."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        allowed = ", ".join(FORMATS)
        raise ValueError(
            f"--output must end in {allowed} (the extension chooses the format), got {path!r}"
        )
    return FORMATS[extension]


def render(timeline: Timeline, path: str, *, title: str) -> None:
    """Draw ``timeline`` into ``path`` in the format its extension names."""
    fmt = format_of(path)
    pyplot = _pyplot()
    with pyplot.rc_context({"svg.fonttype": "none", "svg.hashsalt": "gpupool"}):
        # The page has the title as its heading: not twice.
        figure = draw(timeline, title=None if fmt == "html" else title)
        try:
            buffer = io.BytesIO()
            # No creation date in the file: the same journal draws the same bytes.
            metadata = {"Software": None} if fmt == "png" else {"Date": None}
            figure.savefig(
                buffer, format="png" if fmt == "png" else "svg", dpi=110, metadata=metadata
            )
        finally:
            pyplot.close(figure)
    data = buffer.getvalue()
    if fmt != "png":
        svg = _with_titles(data, timeline)
        if fmt == "svg":
            data = ('<?xml version="1.0" encoding="utf-8" standalone="no"?>\n' + svg).encode()
        else:
            data = _page(svg, timeline, title).encode()
    with atomic_file(path) as file:
        file.write(data)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never a window, whatever the environment says
        import matplotlib.pyplot as pyplot
    except ImportError:
        raise MissingMatplotlib(f"gpupool journal plot needs matplotlib: {INSTALL_HINT}") from None
    return pyplot


def draw(timeline: Timeline, *, title: str | None) -> Figure:
    """The figure: how many tasks wait (a strip on top), then one lane per GPU
    and one for CPU-only attempts, a bar per attempt and GPU."""
    pyplot = _pyplot()
    offsets, total_rows = _lane_offsets(timeline)
    height = 1.4 + 0.9 + max(total_rows, 1) * _ROW_INCHES
    figure, (queue, lanes) = pyplot.subplots(
        2,
        1,
        figsize=(_WIDTH_INCHES, height),
        sharex=True,
        gridspec_kw={"height_ratios": [0.9, max(total_rows, 1) * _ROW_INCHES]},
    )
    horizon = max(timeline.end - timeline.origin, 1e-3)
    _draw_queue(queue, timeline)
    _draw_lanes(lanes, timeline, offsets, total_rows, horizon)
    lanes.set_xlim(0, horizon * 1.01)
    if title:
        figure.suptitle(title, x=0.01, y=1 - 0.08 / height, ha="left", va="top", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.12 / height))
    _draw_bars(lanes, timeline, offsets, horizon)
    if not timeline.bars:
        lanes.text(0.5, 0.5, "no attempt has started yet", transform=lanes.transAxes, ha="center")
    _legend(figure, timeline, height)
    drawn: Figure = figure
    return drawn


def _lane_offsets(timeline: Timeline) -> tuple[list[float], float]:
    """The y of each lane's first row (lanes top to bottom) and the total height."""
    offsets: list[float] = []
    y = 0.0
    for lane in timeline.lanes:
        offsets.append(y)
        y += lane.rows + _LANE_GAP
    return offsets, max(y - _LANE_GAP, 0.0)


def _draw_queue(ax: Axes, timeline: Timeline) -> None:
    steps = queue_depth(timeline.waits)
    xs = [0.0] + [t - timeline.origin for t, _ in steps] + [timeline.end - timeline.origin]
    ys = [0] + [n for _, n in steps] + [steps[-1][1] if steps else 0]
    ax.fill_between(xs, ys, step="post", color="#b0b7c3", linewidth=0)
    ax.step(xs, ys, where="post", color="#56606b", linewidth=0.8)
    top = max(ys)
    ax.set_ylim(0, max(top, 1) * 1.15)
    ax.set_yticks(sorted({0, top}))
    ax.set_ylabel("tasks\nwaiting", fontsize=9, rotation=0, ha="right", va="center")
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_lanes(
    ax: Axes, timeline: Timeline, offsets: list[float], total_rows: float, horizon: float
) -> None:
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    for index, (lane, y) in enumerate(zip(timeline.lanes, offsets, strict=True)):
        if index % 2 == 0:
            ax.axhspan(y - 0.5, y + lane.rows - 0.5, color="#f2f4f7", zorder=0, linewidth=0)
    ax.set_yticks(
        [y + (lane.rows - 1) / 2 for lane, y in zip(timeline.lanes, offsets, strict=True)]
    )
    ax.set_yticklabels([lane.title for lane in timeline.lanes], fontsize=9)
    ax.set_ylim(max(total_rows, 1) - 0.5 + 0.1, -0.6)  # top to bottom
    ax.tick_params(axis="x", labelsize=8)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    start = datetime.datetime.fromtimestamp(timeline.origin, datetime.timezone.utc)
    unit, scale, step = time_axis(horizon)
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / scale:g}"))
    ax.set_xlabel(f"{unit} since the first event ({start:%Y-%m-%d %H:%M:%S} UTC)", fontsize=9)
    for number, t in enumerate(timeline.run_starts, start=2):
        x = t - timeline.origin
        ax.axvline(x, color="#56606b", linestyle="--", linewidth=0.8, zorder=1)
        ax.text(x, -0.55, f" run {number}", fontsize=8, va="bottom", color="#56606b")
    if timeline.live:
        x = timeline.end - timeline.origin
        ax.axvline(x, color=COLOURS[Outcome.RUNNING], linewidth=1.0, zorder=1)
        ax.text(
            x, -0.55, "now ", fontsize=8, va="bottom", ha="right", color=COLOURS[Outcome.RUNNING]
        )


_NICE_STEPS = (1, 2, 2.5, 5, 10, 15, 20, 30, 60)


def time_axis(horizon: float) -> tuple[str, float, float]:
    """The time axis for a run of ``horizon`` seconds (> 0): its unit, the seconds
    in one unit, and a tick step (in seconds) of a round number of units giving
    at most 12 ticks. Hours-long runs are read in minutes or hours, not seconds."""
    unit, scale = ("seconds", 1.0)
    if horizon > 3 * 3600:
        unit, scale = ("hours", 3600.0)
    elif horizon > 5 * 60:
        unit, scale = ("minutes", 60.0)
    span = max(horizon / scale, 1e-9)
    magnitude = 10.0 ** math.floor(math.log10(span / 10))
    step = next(
        (magnitude * n for n in _NICE_STEPS if span / (magnitude * n) <= 12), magnitude * 100
    )
    return unit, scale, step * scale


def _draw_bars(ax: Axes, timeline: Timeline, offsets: list[float], horizon: float) -> None:
    """The bars, their labels where they fit, and an arrow from each failed
    attempt to the next attempt of its task."""
    figure = ax.get_figure()
    assert figure is not None
    axis_px = ax.get_window_extent().width
    px_per_second = axis_px / (horizon * 1.01)
    minimum = 2.0 / px_per_second  # an instant attempt still shows, 2 px wide
    first_bar: dict[tuple[str, int], tuple[float, float, float]] = {}
    for number, bar in enumerate(timeline.bars):
        attempt = bar.attempt
        y = offsets[bar.lane] + bar.row
        left = attempt.start - timeline.origin
        width = max(attempt.end - attempt.start, minimum)
        patch = ax.barh(
            y,
            width,
            left=left,
            height=_BAR_HEIGHT,
            color=COLOURS[attempt.outcome],
            edgecolor=_HATCH_EDGE.get(attempt.outcome, "white"),
            linewidth=0.6,
            hatch=_HATCHED.get(attempt.outcome),
            zorder=2,
        ).patches[0]
        patch.set_gid(f"{_BAR_ID}{number}")
        text = _bar_text(attempt)
        if len(text) * 5.6 + 6 <= width * px_per_second:
            ax.text(
                left + 3 / px_per_second,
                y,
                text,
                fontsize=7.5,
                va="center",
                ha="left",
                color="white",
                clip_on=True,
                zorder=3,
            )
        first_bar.setdefault((attempt.key, attempt.attempt), (left, left + width, y))
    for (key, number), (left, _, y) in sorted(first_bar.items()):
        before = first_bar.get((key, number - 1))
        if before is None:
            continue
        ax.annotate(
            "",
            xy=(left, y),
            xytext=(before[1], before[2]),
            arrowprops={
                "arrowstyle": "->",
                "color": "#333333",
                "linewidth": 0.8,
                "linestyle": (0, (2, 2)),
                "shrinkA": 0,
                "shrinkB": 0,
                "connectionstyle": "arc3,rad=-0.25" if y == before[2] else "arc3,rad=0",
            },
            zorder=4,
        )


def _bar_text(attempt: Attempt) -> str:
    return attempt.label if attempt.attempt <= 1 else f"{attempt.label} #{attempt.attempt}"


def _legend(figure: Figure, timeline: Timeline, height: float) -> None:
    from matplotlib.patches import Patch

    shown = [o for o in Outcome if any(a.outcome is o for a in timeline.attempts)]
    handles: list[Artist] = [
        Patch(
            facecolor=COLOURS[o],
            hatch=_HATCHED.get(o),
            edgecolor=_HATCH_EDGE.get(o, "white"),
            label=o.value,
        )
        for o in shown
    ]
    if any(a.attempt > 1 for a in timeline.attempts):
        from matplotlib.lines import Line2D

        handles.append(
            Line2D([], [], color="#333333", linestyle=(0, (2, 2)), linewidth=0.8, label="retry")
        )
    if handles:
        figure.legend(
            handles=handles,
            loc="upper right",
            bbox_to_anchor=(0.995, 1 - 0.02 / height),
            ncol=len(handles),
            fontsize=8,
            frameon=False,
            handlelength=1.4,
            columnspacing=1.0,
        )


def describe_attempt(attempt: Attempt, timeline: Timeline, attempts: int) -> str:
    """A bar's hover title: the task, the attempt, where, when, and how it ended."""
    where = _where(attempt)
    lines = [
        f"{attempt.label} (key {attempt.key})" if attempt.label != attempt.key else attempt.key,
        f"attempt {attempt.attempt} of {attempts}: {attempt.outcome.value}, {where}",
        f"started at +{attempt.start - timeline.origin:.2f} s after waiting "
        f"{attempt.start - attempt.ready_at:.2f} s; ran {attempt.end - attempt.start:.2f} s"
        + (" so far" if attempt.outcome is Outcome.RUNNING else ""),
    ]
    if attempt.error:
        lines.append(attempt.error.splitlines()[0])
    return "\n".join(lines)


def _where(attempt: Attempt) -> str:
    if attempt.gpu_indices is None:
        return "GPUs not recorded (schema version 1)"
    if not attempt.gpu_indices:
        return "CPU only"
    return ("GPU " if len(attempt.gpu_indices) == 1 else "GPUs ") + ", ".join(
        map(str, attempt.gpu_indices)
    )


def _with_titles(svg: bytes, timeline: Timeline) -> str:
    """matplotlib's SVG with a ``<title>`` in each bar's group (its hover text)."""
    for prefix, uri in _SVG_PREFIXES.items():  # matplotlib's, kept as it wrote them
        ET.register_namespace(prefix, uri)
    root = ET.fromstring(svg)
    attempts: dict[str, int] = {}
    for attempt in timeline.attempts:
        attempts[attempt.key] = max(attempts.get(attempt.key, 0), attempt.attempt)
    bars: list[Bar] = list(timeline.bars)
    for group in root.iter(f"{{{_SVG_NS}}}g"):
        gid = group.get("id", "")
        if gid.startswith(_BAR_ID):
            bar = bars[int(gid.removeprefix(_BAR_ID))]
            title = ET.Element(f"{{{_SVG_NS}}}title")
            title.text = describe_attempt(bar.attempt, timeline, attempts[bar.attempt.key])
            group.insert(0, title)
            group.set("class", f"bar {bar.attempt.outcome.name.lower()}")
    return ET.tostring(root, encoding="unicode")


def _page(svg: str, timeline: Timeline, title: str) -> str:
    """One self-contained HTML page: the SVG inline, a heading, what the colours mean."""
    keys = {a.key for a in timeline.attempts}
    summary = (
        f"{len(keys)} task(s), {len(timeline.attempts)} attempt(s) in "
        f"{len(timeline.lanes)} lane(s). "
        + ("Live: drawn up to the moment it was read. " if timeline.live else "")
        + "Hover over a bar for its task, attempt, GPUs, times and error."
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
        "svg{max-width:100%;height:auto}"
        ".bar:hover{opacity:0.8}</style>\n</head>\n<body>\n"
        f'<h1 style="font-size:1.2em">{html.escape(title)}</h1>\n'
        f"<p>{html.escape(summary)}</p>\n{svg}\n</body>\n</html>\n"
    )
