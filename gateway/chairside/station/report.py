"""The session record (PDF) as the station serves it: ``GET /chair/{chair}/report``.

Reuses :mod:`chairside.record` as ``chairside report`` does (query →
figures → chart and PDF: :func:`~chairside.record.report_command.load_session`
and :func:`~chairside.record.report_command.render_report`); nothing here
computes a figure.  InfluxDB is read with the station's own (read-only)
login; every query has the reader's deadline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, tzinfo

from chairside.record.query import InfluxReader
from chairside.record.report_command import load_session, render_report


@dataclass(frozen=True, slots=True)
class RecordSource:
    """Where the station reads sessions from, and how it prints times."""

    reader: InfluxReader
    tz: tzinfo = UTC
    site_name: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    filename: str
    pdf: bytes
    session: str


def make_report(source: RecordSource, site: str, chair: str, session_id: str | None, now_ms: int) -> Report | str:
    """The PDF of the chair's session (its latest when ``session_id`` is None),
    or why there is none (a sentence for the nurse).  Raises
    :class:`~chairside.record.query.RecordQueryError` when InfluxDB fails."""
    loaded = load_session(source.reader, site, chair, session_id, now_ms)
    if isinstance(loaded, str):
        return loaded
    rendered = render_report(loaded, tz=source.tz, site_name=source.site_name, now_ms=now_ms)
    sid = loaded.figures.session.id
    return Report(re.sub(r"[^A-Za-z0-9._-]", "_", sid) + ".pdf", rendered.pdf, sid)
