"""``chairside report``: the session record as a PDF for the chart, and its chart as PNG.

``chairside report --site demo-clinic --chair 3 [--session ID] --out DIR``
reads the session (the chair's latest when ``--session`` is not given) from
InfluxDB, computes its figures and writes ``DIR/<session>.pdf`` and
``DIR/<session>.png``.  An open session is reported up to now.

matplotlib and fpdf2 are imported only when a report is made: ``chairside``
builds every subcommand's parser at start, and the gateway must not pay for them.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chairside import contract
from chairside.record.data import SessionData
from chairside.record.figures import Figures, compute
from chairside.record.query import InfluxReader, RecordQueryError, find_session, load
from chairside.store.influx import CredentialsError, read_credentials

log = logging.getLogger("chairside.record")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", default="demo-clinic")
    parser.add_argument("--chair", required=True)
    parser.add_argument("--session", default=None, help="session id (default: the chair's latest session)")
    parser.add_argument("--influx-url", default="http://127.0.0.1:8086", help="InfluxDB 1.x URL")
    parser.add_argument("--database", default=contract.influx_database(), help="database")
    parser.add_argument("--influx-credentials", type=Path, default=None,
                        help="JSON file {user, password} of an InfluxDB user with READ (an installed server: "
                        "/etc/chairside/influx/grafana.json)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per InfluxDB query")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for <session>.pdf and <session>.png")
    parser.add_argument("--tz", default="UTC", help="time zone of the printed times, e.g. Europe/London")
    parser.add_argument("--site-name", default=None, help="the clinic's name for the header (default: site id)")


@dataclass(frozen=True, slots=True)
class Loaded:
    data: SessionData
    figures: Figures


def load_session(reader: InfluxReader, site: str, chair: str, session_id: str | None,
                 now_ms: int) -> Loaded | str:
    """The session's data and figures, or why not (a message for the user)."""
    session = find_session(reader, site, chair, session_id)
    if session is None:
        which = f"session {session_id!r}" if session_id else "session"
        return f"no {which} stored for chair {site}/{chair} (start one with `chairside staff session start`)"
    data = load(reader, session, now_ms)
    return Loaded(data, compute(data, now_ms))


def reader_from_args(args: argparse.Namespace) -> InfluxReader:
    """The InfluxDB reader of ``chairside report``/``export`` (raises CredentialsError, a ValueError)."""
    path = getattr(args, "influx_credentials", None)
    credentials = read_credentials(path) if path is not None else None
    return InfluxReader(args.influx_url, args.database, args.timeout, credentials)


def load_from_args(args: argparse.Namespace, now_ms: int) -> Loaded | int:
    """The session ``chairside report``/``export`` name, or the exit code after
    saying why not (2: bad credentials file; 1: InfluxDB or no such session)."""
    try:
        reader = reader_from_args(args)
    except CredentialsError as exc:
        print(str(exc))
        return 2
    try:
        loaded = load_session(reader, args.site, args.chair, args.session, now_ms)
    except RecordQueryError as exc:
        print(f"cannot read the session: {exc}")
        return 1
    if isinstance(loaded, str):
        print(loaded)
        return 1
    return loaded


@dataclass(frozen=True, slots=True)
class Rendered:
    pdf: bytes
    png: bytes


def render_report(loaded: Loaded, *, tz: tzinfo, site_name: str | None = None,
                  now_ms: int | None = None) -> Rendered:
    """The chart (PNG) and the PDF of a loaded session, in memory: what
    ``chairside report`` writes and what the station serves."""
    from chairside.record import chart, pdf  # matplotlib and fpdf2: only when a report is made

    png = chart.render_png(loaded.data, loaded.figures)
    return Rendered(pdf.render_pdf(loaded.figures, png, site_name=site_name, tz=tz, made_ms=now_ms), png)


@dataclass(frozen=True, slots=True)
class ReportFiles:
    pdf: Path
    png: Path
    figures: Figures


def write_report(loaded: Loaded, out_dir: Path, *, tz: tzinfo, site_name: str | None = None,
                 now_ms: int | None = None) -> ReportFiles:
    """Render the chart and the PDF of a loaded session into ``out_dir``."""
    rendered = render_report(loaded, tz=tz, site_name=site_name, now_ms=now_ms)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = loaded.figures.session.id
    png_path, pdf_path = out_dir / f"{name}.png", out_dir / f"{name}.pdf"
    png_path.write_bytes(rendered.png)
    pdf_path.write_bytes(rendered.pdf)
    return ReportFiles(pdf_path, png_path, loaded.figures)


def run(args: argparse.Namespace) -> int:
    try:
        tz = ZoneInfo(args.tz)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"unknown time zone {args.tz!r} (e.g. UTC, Europe/London)")
        return 2
    now_ms = time.time_ns() // 1_000_000
    loaded = load_from_args(args, now_ms)
    if isinstance(loaded, int):
        return loaded
    files = write_report(loaded, args.out, tz=tz, site_name=args.site_name, now_ms=now_ms)
    print(f"wrote {files.pdf} and {files.png}")
    return 0
