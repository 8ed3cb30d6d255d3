"""Regenerate the tables in docs/contract.md from gateway/chairside/contract.json.

The prose of docs/contract.md is hand-written; everything between the
``<!-- generated:begin -->`` and ``<!-- generated:end -->`` markers comes from
the JSON, so the document cannot drift from what the gateway validates.
``--check`` exits 1 if the document is out of date (run by the test suite).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "gateway" / "chairside" / "contract.json"
DOC = REPO / "docs" / "contract.md"
BEGIN = "<!-- generated:begin -->"
END = "<!-- generated:end -->"


def _range(spec: dict[str, Any]) -> str:
    if spec.get("type") == "enum":
        return ", ".join(f"`{v}`" for v in spec["values"])
    if "min" in spec or "max" in spec:
        return f"{spec.get('min', '')} … {spec.get('max', '')}"
    if "max_len" in spec:
        return f"≤ {spec['max_len']} chars"
    return ""


def _field_table(fields: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| field | type | required | null ok | unit | valid | meaning |", "|---|---|---|---|---|---|---|"]
    for name in sorted(fields):
        spec = fields[name]
        rows.append(
            f"| `{name}` | {spec.get('type', '')} | {'yes' if spec.get('required') else 'no'} | "
            f"{'yes' if spec.get('nullable') else 'no'} | {spec.get('unit', '')} | {_range(spec)} | "
            f"{spec.get('doc', '')} |"
        )
    return rows


def render(contract: dict[str, Any]) -> str:
    out: list[str] = [f"Schema version **{contract['schema_version']}**; ids match `{contract['id_pattern']}`; "
                      f"payloads at most {contract['max_payload_bytes']} bytes of UTF-8 JSON.", ""]
    out += ["### Topics", "", "| name | topic | from | QoS | retained |", "|---|---|---|---|---|"]
    for name in sorted(contract["topics"]):
        spec = contract["topics"][name]
        retained = "yes" if spec["retain"] else "no"
        out.append(f"| {name} | `{spec['pattern']}` | {spec['from']} | {spec['qos']} | {retained} |")
    out += ["", "### Fields every box message carries", ""] + _field_table(contract["common_fields"])
    for kind in sorted(contract["messages"]):
        msg = contract["messages"][kind]
        out += ["", f"### `{kind}` — {msg['doc']}", ""] + _field_table(msg["fields"])
    out += ["", "### Commands to the box (`cmd` topic)", "",
            ("Envelope: `v`, `cmd`, `id` (answered on `resp` with the same `id`), optional `exp` "
             "(ms since 1970-01-01 UTC: a box with a synchronised clock ignores the command "
             "after it and counts it in `cmd_expired`)."), "",
            "| cmd | arguments | meaning |", "|---|---|---|"]
    for name in sorted(contract["commands"]):
        spec = contract["commands"][name]
        args = ", ".join(f"`{a}` ({_range(s)} {s.get('unit', '')})" for a, s in sorted(spec["args"].items()))
        out.append(f"| `{name}` | {args or '—'} | {spec['doc']} |")
    for kind in sorted(contract["gateway_messages"]):
        msg = contract["gateway_messages"][kind]
        out += ["", f"### `{kind}` (gateway/staff) — {msg['doc']}", ""] + _field_table(msg["fields"])
    influx = contract["influx"]
    out += ["", f"### InfluxDB schema (database `{influx['database']}`, precision {influx['precision']})", "",
            "| measurement | tags | fields |", "|---|---|---|"]
    for name in sorted(influx["measurements"]):
        spec = influx["measurements"][name]
        out.append(f"| `{name}` | {', '.join(spec['tags'])} | {', '.join(spec['fields'])} |")
    return "\n".join(out) + "\n"


def updated_document(doc_text: str, generated: str) -> str:
    head, _, rest = doc_text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{generated}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    contract = json.loads(CONTRACT.read_text())
    current = DOC.read_text()
    wanted = updated_document(current, render(contract))
    if args.check:
        if wanted != current:
            print("docs/contract.md is out of date: run python tools/gen_contract_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
