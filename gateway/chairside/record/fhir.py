"""The session as a FHIR R4 Bundle (JSON), validated with ``fhir.resources``.

A ``transaction`` Bundle a FHIR server can take at its base URL:

* a **Device** for the chair box (identifier ``site/chair``);
* an **Encounter** for the session (period, status, the clinic reference
  as an identifier, who started it as admitter and who ended it as
  discharger; no patient: Chairside stores no patient identity, so the
  receiving system links the encounter to its patient by the reference);
* one **Observation** (category vital-signs, status final, effective time =
  the stored time of the reading) per stored valid reading of the session:
  SpO2 by pulse oximetry (LOINC 59408-5, ``%``), heart rate from the
  oximeter (8867-4, ``/min``), the blood-pressure panel (85354-9) with
  systolic (8480-6) and diastolic (8462-4) components in ``mm[Hg]``, and the
  mean blood pressure (8478-0, ``mm[Hg]``); each references the Device and
  the Encounter.

Units are UCUM (``http://unitsofmeasure.org``).  Resource ids are derived
from the session and the reading's time (UUID v5), so exporting the same
session twice gives the same Bundle.  Validation uses the package's R4B
models (FHIR 4.3.0, the R4 line of ``fhir.resources``; it ships no 4.0.1
models): Bundle, Device, Encounter and Observation keep the R4 structure used
here.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from chairside.record.data import SessionData
from chairside.record.figures import Figures

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
VITAL_SIGNS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                           "code": "vital-signs", "display": "Vital Signs"}]}
NAMESPACE = uuid.UUID("2f4c3d1e-9a57-4b8e-bb1c-6e0c2a7d5f10")
"""UUID v5 namespace of Chairside's FHIR resource ids"""
SYSTEM_BOX = "urn:chairside:box"
SYSTEM_SESSION = "urn:chairside:session"
SYSTEM_CLINIC_REF = "urn:chairside:clinic-reference"

SPO2 = ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", "%")
HEART_RATE = ("8867-4", "Heart rate", "/min", "/min")
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
SYSTOLIC = ("8480-6", "Systolic blood pressure", "mm[Hg]", "mmHg")
DIASTOLIC = ("8462-4", "Diastolic blood pressure", "mm[Hg]", "mmHg")
MEAN_BP = ("8478-0", "Mean blood pressure", "mm[Hg]", "mmHg")


def fhir_time(t_ms: int) -> str:
    """``2026-09-21T10:15:02.250+00:00``: the stored ms, exactly."""
    return datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _urn(*parts: object) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, '/'.join(str(p) for p in parts))}"


def _code(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}


def _quantity(value: float, unit: str, ucum: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": ucum}


def bundle_dict(data: SessionData, figures: Figures) -> dict[str, Any]:
    """The Bundle as plain JSON-ready data (not yet validated)."""
    s = figures.session
    device_urn = _urn(s.site, s.chair, "device")
    encounter_urn = _urn(s.id, "encounter")
    entries: list[dict[str, Any]] = []

    def add(urn: str, resource: dict[str, Any]) -> None:
        entries.append({"fullUrl": urn, "resource": resource,
                        "request": {"method": "POST", "url": resource["resourceType"]}})

    add(device_urn, {
        "resourceType": "Device",
        "identifier": [{"system": SYSTEM_BOX, "value": f"{s.site}/{s.chair}"}],
        "status": "active",
        "deviceName": [{"name": f"Chairside chair box {s.site}/{s.chair}", "type": "user-friendly-name"}],
    })
    identifiers = [{"system": SYSTEM_SESSION, "value": s.id}]
    if s.ref:
        identifiers.append({"system": SYSTEM_CLINIC_REF, "value": s.ref})
    participants: list[dict[str, Any]] = [_participant("ADM", "admitter", s.started_by)]
    if s.ended_by:
        participants.append(_participant("DIS", "discharger", s.ended_by))
    period = {"start": fhir_time(s.start_ms)}
    if s.end_ms is not None:
        period["end"] = fhir_time(s.end_ms)
    add(encounter_urn, {
        "resourceType": "Encounter",
        "identifier": identifiers,
        "status": "finished" if s.end_ms is not None else "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                  "display": "ambulatory"},
        "type": [{"text": "ketamine infusion session (Chairside)"}],
        "participant": participants,
        "period": period,
    })

    def observation(key: str, t_ms: int, code: dict[str, Any], **value: Any) -> None:
        add(_urn(s.id, key, t_ms), {
            "resourceType": "Observation", "status": "final", "category": [VITAL_SIGNS], "code": code,
            "effectiveDateTime": fhir_time(t_ms), "device": {"reference": device_urn},
            "encounter": {"reference": encounter_urn}, **value,
        })

    start, end = s.start_ms, figures.end_ms
    for v in data.vitals:
        if not (start <= v.t_ms <= end and v.valid):
            continue
        if v.spo2 is not None:
            observation("spo2", v.t_ms, _code(*SPO2[:2]), valueQuantity=_quantity(v.spo2, SPO2[3], SPO2[2]))
        if v.pr is not None:
            observation("hr", v.t_ms, _code(*HEART_RATE[:2]),
                        valueQuantity=_quantity(v.pr, HEART_RATE[3], HEART_RATE[2]))
    for n in data.nibp:
        if not (start <= n.t_ms <= end and n.valid) or n.sys is None or n.dia is None:
            continue
        observation("bp", n.t_ms, _code(*BP_PANEL), component=[
            {"code": _code(*SYSTOLIC[:2]), "valueQuantity": _quantity(n.sys, SYSTOLIC[3], SYSTOLIC[2])},
            {"code": _code(*DIASTOLIC[:2]), "valueQuantity": _quantity(n.dia, DIASTOLIC[3], DIASTOLIC[2])},
        ])
        if n.map is not None:
            observation("map", n.t_ms, _code(*MEAN_BP[:2]), valueQuantity=_quantity(n.map, MEAN_BP[3], MEAN_BP[2]))
    return {"resourceType": "Bundle", "type": "transaction", "timestamp": fhir_time(end), "entry": entries}


def _participant(code: str, display: str, who: str) -> dict[str, Any]:
    return {"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                  "code": code, "display": display}]}],
            "individual": {"display": who}}


def bundle(data: SessionData, figures: Figures) -> Bundle:
    """The validated Bundle (``pydantic.ValidationError`` names what is wrong)."""
    return Bundle.model_validate(bundle_dict(data, figures))


def bundle_json(data: SessionData, figures: Figures) -> str:
    """The Bundle as FHIR JSON text, once ``fhir.resources`` has validated it.

    The text is the validated data itself (``json.dumps``): re-serialising
    the pydantic model gives the same JSON but takes longer than validating
    (docs/performance.md)."""
    data_dict = bundle_dict(data, figures)
    Bundle.model_validate(data_dict)
    return json.dumps(data_dict, ensure_ascii=False, separators=(",", ":"))


class PostError(RuntimeError):
    """The FHIR server did not take the Bundle."""


def post(url: str, body: str, timeout_s: float = 30.0) -> int:
    """POST the Bundle to a FHIR server's base URL; its HTTP status (2xx), else PostError."""
    request = urllib.request.Request(url, data=body.encode("utf-8"), method="POST", headers={
        "Content-Type": "application/fhir+json; charset=utf-8", "Accept": "application/fhir+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        raise PostError(f"{url}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
    except (OSError, urllib.error.URLError) as exc:
        raise PostError(f"{url}: {exc}") from exc
    return status

