"""Commands and views of the patient domain."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class RegisterPatient(BaseModel):
    """A hospital's registration (``register``) or demographics update (``update``) of a patient,
    already in canonical FHIR R4 form. ``source`` is the partner that sent it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patient: dict[str, Any]
    source: str
    mode: Literal["register", "update"] = "register"


class PatientView(BaseModel):
    id: str
    version: int
    created: bool
    changed: bool
