"""The session's trend chart (matplotlib, PNG): SpO2 above; pulse, NIBP below.

Drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot,
no display, no global state), from the stored readings and the figures'
alarm episodes.  The x axis is minutes after the session start.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chairside.record.data import SessionData
from chairside.record.figures import Figures

PRIORITY_COLOURS = {"high": "#c62828", "medium": "#ef6c00", "low": "#1565c0"}


def _minutes(t_ms: int, start_ms: int) -> float:
    return (t_ms - start_ms) / 60_000


def render_png(data: SessionData, figures: Figures, dpi: int = 110) -> bytes:
    """The chart as PNG bytes."""
    start, end = figures.session.start_ms, figures.end_ms
    vitals = [v for v in data.vitals if start <= v.t_ms <= end and v.valid]
    nibp = [n for n in data.nibp if start <= n.t_ms <= end and n.valid]
    fig = Figure(figsize=(10, 4.8), dpi=dpi)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.4]})
    top.plot([_minutes(v.t_ms, start) for v in vitals if v.spo2 is not None],
             [v.spo2 for v in vitals if v.spo2 is not None], color="#1565c0", linewidth=0.9, label="SpO2 %")
    for limit, style in ((90, "--"), (85, ":")):
        top.axhline(limit, color="#9e9e9e", linestyle=style, linewidth=0.8)
    top.set_ylabel("SpO2 (%)")
    low = min([v.spo2 for v in vitals if v.spo2 is not None], default=90)
    top.set_ylim(min(80, low - 2), 101)
    top.grid(True, linewidth=0.3)
    bottom.plot([_minutes(v.t_ms, start) for v in vitals if v.pr is not None],
                [v.pr for v in vitals if v.pr is not None], color="#2e7d32", linewidth=0.9, label="pulse (bpm)")
    xs = [_minutes(n.t_ms, start) for n in nibp]
    bottom.scatter(xs, [n.sys for n in nibp], marker="v", color="#6a1b9a", s=28, label="NIBP systolic", zorder=3)
    bottom.scatter(xs, [n.dia for n in nibp], marker="^", color="#6a1b9a", s=28, label="NIBP diastolic", zorder=3)
    for x, n in zip(xs, nibp, strict=True):
        bottom.plot([x, x], [n.dia, n.sys], color="#6a1b9a", linewidth=0.8)
    if figures.baseline is not None:
        bottom.axhline(figures.baseline.sys, color="#6a1b9a", linestyle=":", linewidth=0.8,
                       label=f"baseline systolic {figures.baseline.sys:g}")
    bottom.set_ylabel("pulse (bpm) / BP (mmHg)")
    bottom.set_xlabel("minutes after session start")
    bottom.grid(True, linewidth=0.3)
    for episode in figures.episodes:
        if episode.raised_ms is None:
            continue
        colour = PRIORITY_COLOURS.get(episode.priority, "#616161")
        x = _minutes(episode.raised_ms, start)
        for axis in (top, bottom):
            axis.axvline(x, color=colour, linewidth=1.0, alpha=0.8)
        top.annotate(episode.alarm, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=7, color=colour,
                     rotation=90, va="top", ha="right")
        if episode.acked_ms is not None:
            top.axvline(_minutes(episode.acked_ms, start), color=colour, linewidth=0.8, linestyle="--", alpha=0.8)
    top.set_xlim(0, max(_minutes(end, start), 1 / 60))
    top.legend(loc="lower left", fontsize=7)
    bottom.legend(loc="upper left", fontsize=7, ncols=2)
    top.set_title(f"Chair {figures.session.chair} - session {figures.session.id}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
