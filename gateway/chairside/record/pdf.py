"""The session record as a PDF for the chart (fpdf2), from :class:`Figures`.

One A4 page or more: header (site, chair, session, times, staff), the trend
chart (:mod:`chairside.record.chart`), the figures, the alarm table, limit
changes, monitoring gaps and the adjunct-monitoring disclaimer.  Text is set
in DejaVu Sans (the TTF matplotlib ships), so names with accents print as
typed.  Times are printed in ``tz`` (default UTC) with the zone named.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import matplotlib
from fpdf import FPDF

from chairside.record.figures import Figures, Peak

DISCLAIMER = (
    "Chairside is adjunct monitoring software, not a validated medical device. This record shows what the "
    "chair box measured and what the system stored; it does not replace the bedside monitor, the clinical "
    "observations or the clinic's own documentation. Check every figure against the patient's chart."
)
_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def when(t_ms: int | None, tz: tzinfo) -> str:
    if t_ms is None:
        return "-"
    moment = datetime.fromtimestamp(t_ms / 1000, tz)
    return moment.strftime("%Y-%m-%d %H:%M:%S ") + (moment.tzname() or "")


def clock(t_ms: int | None, tz: tzinfo) -> str:
    return "-" if t_ms is None else datetime.fromtimestamp(t_ms / 1000, tz).strftime("%H:%M:%S")


def span(ms: int | None) -> str:
    """``1 h 02 min 05 s`` / ``4 min 10 s`` / ``12 s`` (whole seconds, rounded down)."""
    if ms is None:
        return "-"
    seconds = max(0, ms) // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _peak(peak: Peak | None) -> str:
    if peak is None:
        return "-"
    rise = "" if peak.rise is None else f" ({peak.rise:+g} over baseline)"
    return f"{peak.value} mmHg at {span(peak.after_start_ms)} after start{rise}"


def figure_rows(figures: Figures, tz: tzinfo) -> list[tuple[str, str]]:
    """The figures as (label, text) pairs: the PDF's table (and what tests read back)."""
    b = figures.baseline
    baseline = ("none (no valid NIBP reading in the 15 min before or the 5 min after the start)" if b is None
                else f"{b.sys:g}/{b.dia:g} mmHg, MAP {_number(b.map)} (median of {b.readings} reading(s), "
                     f"{b.source})")
    spo2 = ("-" if figures.spo2_min is None
            else f"{figures.spo2_min.value} % at {span(figures.spo2_min.after_start_ms)} after start")
    pulse = ("-" if figures.pulse_min is None or figures.pulse_max is None
             else f"{figures.pulse_min.value} - {figures.pulse_max.value} bpm")
    return [
        ("Baseline BP", baseline),
        ("Peak systolic", _peak(figures.peak_sys)),
        ("Peak diastolic", _peak(figures.peak_dia)),
        ("Peak MAP", _peak(figures.peak_map)),
        ("Lowest SpO2", spo2),
        ("Time SpO2 < 90 %", span(figures.below_ms[90])),
        ("Time SpO2 < 85 %", span(figures.below_ms[85])),
        ("Pulse range", pulse),
        ("Readings", f"{figures.vitals_valid} valid oximeter readings, {figures.nibp_valid} NIBP measurements"),
    ]


class _Record(FPDF):
    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("dejavu", size=7)
        self.cell(0, 5, f"Chairside session record - page {self.page_no()}/{{nb}}", align="C")


def render_pdf(figures: Figures, chart_png: bytes, *, site_name: str | None = None,
               tz: tzinfo = UTC, made_ms: int | None = None) -> bytes:
    """The record as PDF bytes."""
    s = figures.session
    pdf = _Record(orientation="P", unit="mm", format="A4")
    pdf.set_title(f"Chairside session record {s.id}")
    pdf.set_creator("chairside report")
    pdf.add_font("dejavu", "", str(_FONT_DIR / "DejaVuSans.ttf"))
    pdf.add_font("dejavu", "B", str(_FONT_DIR / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("dejavu", "B", 14)
    pdf.cell(0, 8, "Infusion session record", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("dejavu", size=9)
    state = "open (record up to the time it was made)" if s.end_ms is None else f"ended ({s.end_why})"
    if figures.truncated:
        state += "; the record covers only the first 24 h"
    header = [
        ("Site", site_name or s.site),
        ("Chair", s.chair),
        ("Session", s.id),
        ("Clinic reference", s.ref or "-"),
        ("Start", f"{when(s.start_ms, tz)}  by {s.started_by}"),
        ("End", f"{when(figures.end_ms, tz)}  by {s.ended_by or '-'}  - {state}"),
        ("Duration", span(figures.duration_ms)),
    ]
    if made_ms is not None:
        header.append(("Record made", when(made_ms, tz)))
    _pairs(pdf, header)
    pdf.ln(2)
    pdf.image(io.BytesIO(chart_png), w=pdf.epw)
    _heading(pdf, "Figures")
    _pairs(pdf, figure_rows(figures, tz))
    rows: list[tuple[str, ...]]
    _heading(pdf, "Alarms")
    if not figures.episodes:
        pdf.cell(0, 5, "No alarm during the session.", new_x="LMARGIN", new_y="NEXT")
    else:
        rows = [("Alarm", "Priority", "Raised", "Acknowledged (by)", "Cleared", "Response")]
        for e in figures.episodes:
            acked = "-" if e.acked_ms is None else f"{clock(e.acked_ms, tz)} ({e.acked_by or '?'})"
            rows.append((e.alarm, e.priority, clock(e.raised_ms, tz), acked, clock(e.cleared_ms, tz),
                         span(e.response_ms)))
        _table(pdf, rows, (38, 18, 22, 52, 22, 28))
    _heading(pdf, "Limit changes")
    if not figures.limit_changes:
        pdf.cell(0, 5, "No limit changed during the session.", new_x="LMARGIN", new_y="NEXT")
    else:
        rows = [("Time", "Limit", "Old", "New", "By", "Reason")]
        rows += [(clock(c.t_ms, tz), c.param, _number(c.old), _number(c.new) if c.new is not None else "default",
                  c.by, c.reason) for c in figures.limit_changes]
        _table(pdf, rows, (20, 38, 14, 16, 36, 56))
    _heading(pdf, "Monitoring gaps")
    if not figures.gaps:
        pdf.cell(0, 5, "No monitoring gap.", new_x="LMARGIN", new_y="NEXT")
    else:
        rows = [("Kind", "From", "To", "Duration")]
        rows += [(g.kind, clock(g.start_ms, tz), clock(g.end_ms, tz), span(g.duration_ms)) for g in figures.gaps]
        _table(pdf, rows, (40, 30, 30, 40))
    pdf.ln(4)
    pdf.set_font("dejavu", size=8)
    pdf.multi_cell(0, 4, DISCLAIMER)
    return bytes(pdf.output())


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(2)
    pdf.set_font("dejavu", "B", 11)
    pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("dejavu", size=9)


def _pairs(pdf: FPDF, rows: list[tuple[str, str]]) -> None:
    for label, text in rows:
        pdf.set_font("dejavu", "B", 9)
        pdf.cell(38, 5, label)
        pdf.set_font("dejavu", size=9)
        pdf.multi_cell(0, 5, text, new_x="LMARGIN", new_y="NEXT")


def _table(pdf: FPDF, rows: list[tuple[str, ...]], widths: tuple[int, ...]) -> None:
    for i, row in enumerate(rows):
        pdf.set_font("dejavu", "B" if i == 0 else "", 8)
        for width, text in zip(widths, row, strict=True):
            pdf.cell(width, 5, text[:60], border=1)
        pdf.ln(5)
    pdf.set_font("dejavu", size=9)
