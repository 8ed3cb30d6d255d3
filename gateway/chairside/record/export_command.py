"""``chairside export --format fhir``: the session as a FHIR R4 Bundle, to a file or a FHIR server.

``chairside export --format fhir --site S --chair 3 [--session ID] --out FILE``
writes the validated Bundle (JSON); ``--post URL`` sends it to a FHIR
server's base URL (a ``transaction`` Bundle) and prints the HTTP status.
HL7 v2 (ORU^R01) is not implemented.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from chairside.record.report_command import add_common, load_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--format", choices=("fhir",), default="fhir", help="fhir: FHIR R4 Bundle (JSON)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="write the Bundle to this file")
    target.add_argument("--post", metavar="URL", help="POST the Bundle to this FHIR server base URL")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError  # fhir.resources (pydantic): only when exporting

    from chairside.record import fhir

    now_ms = time.time_ns() // 1_000_000
    loaded = load_from_args(args, now_ms)
    if isinstance(loaded, int):
        return loaded
    try:
        text = fhir.bundle_json(loaded.data, loaded.figures)
    except ValidationError as exc:
        print(f"the FHIR Bundle does not validate (nothing written): {exc}")
        return 1
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out} (FHIR R4 Bundle, {len(loaded.data.vitals)} oximeter readings)")
        return 0
    try:
        status = fhir.post(args.post, text)
    except fhir.PostError as exc:
        print(f"the FHIR server did not take the Bundle: {exc}")
        return 1
    print(f"posted the session {loaded.figures.session.id} to {args.post}: HTTP {status}")
    return 0
