"""Electrochemical techniques with the canonical parameters of shared/formats.md.

Fields are SI floats named by unit suffix (volts, amperes, seconds, hertz). Every potential
states its reference: `vs` is "ref" (the reference electrode) or "ocp" (open circuit).
Drivers turn these into instrument scripts; recipes build them from quantity strings.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

CHAMEO = "https://w3id.org/emmo/domain/characterisation-methodology/chameo#"
EMMO_EC = "https://w3id.org/emmo/domain/electrochemistry#"


class Technique(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    technique: str
    #: ontology IRI of the technique (CHAMEO / EMMO), for provenance
    iri: str = ""


class OCV(Technique):
    technique: Literal["ocv"] = "ocv"
    iri: str = CHAMEO + "OpenCircuitHold"
    duration_s: float = Field(gt=0)
    sample_interval_s: float = Field(gt=0)


class CA(Technique):
    technique: Literal["ca"] = "ca"
    iri: str = CHAMEO + "Chronoamperometry"
    potential_v: float
    vs: Literal["ref", "ocp"] = "ref"
    duration_s: float = Field(gt=0)
    sample_interval_s: float = Field(gt=0)
    current_range_a: float | None = Field(default=None, gt=0, description="None = autorange")


class CP(Technique):
    technique: Literal["cp"] = "cp"
    iri: str = CHAMEO + "Chronopotentiometry"
    current_a: float
    duration_s: float = Field(gt=0)
    sample_interval_s: float = Field(gt=0)
    potential_min_v: float | None = None
    potential_max_v: float | None = None


class LSV(Technique):
    technique: Literal["lsv"] = "lsv"
    iri: str = CHAMEO + "LinearScanVoltammetry"
    E_begin_v: float
    E_end_v: float
    E_step_v: float = Field(gt=0)
    scan_rate_v_s: float = Field(gt=0)
    vs: Literal["ref", "ocp"] = "ref"
    current_range_a: float | None = Field(default=None, gt=0)


class CV(Technique):
    technique: Literal["cv"] = "cv"
    iri: str = CHAMEO + "CyclicVoltammetry"
    E_begin_v: float
    E_vertex1_v: float
    E_vertex2_v: float
    E_step_v: float = Field(gt=0)
    scan_rate_v_s: float = Field(gt=0)
    n_scans: int = Field(default=1, ge=1)
    vs: Literal["ref", "ocp"] = "ref"
    current_range_a: float | None = Field(default=None, gt=0)


class PEIS(Technique):
    """Potentiostatic EIS. The frequency grid is `n_frequencies` points, log-spaced from
    f_start to f_end inclusive (MethodSCRIPT's n_freq)."""

    technique: Literal["peis"] = "peis"
    iri: str = CHAMEO + "ElectrochemicalImpedanceSpectroscopy"
    E_dc_v: float = 0.0
    vs: Literal["ref", "ocp"] = "ocp"
    amplitude_v: float = Field(gt=0, description="AC amplitude, V rms")
    f_start_hz: float = Field(gt=0)
    f_end_hz: float = Field(gt=0)
    n_frequencies: int = Field(ge=1)


class GCPLPhase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["cc", "rest"]
    current_a: float = 0.0  # positive = charge (anodic)
    upper_cutoff_v: float | None = None
    lower_cutoff_v: float | None = None
    max_time_s: float = Field(gt=0)
    sample_interval_s: float = Field(gt=0)


class GCPL(Technique):
    """Galvanostatic cycling: each cycle runs the phases in order (e.g. charge, rest,
    discharge, rest); a cc phase ends at its cut-off voltage or max time."""

    technique: Literal["gcpl"] = "gcpl"
    iri: str = EMMO_EC + "electrochemistry_79a8802e_8296_459a_b65d_6e5c79e1bf37"
    phases: list[GCPLPhase] = Field(min_length=1)
    n_cycles: int = Field(ge=1)
    nominal_capacity_ah: float | None = Field(default=None, gt=0)


AnyTechnique = Annotated[OCV | CA | CP | LSV | CV | PEIS | GCPL, Field(discriminator="technique")]

TECHNIQUES: dict[str, type[Technique]] = {
    "ocv": OCV, "ca": CA, "cp": CP, "lsv": LSV, "cv": CV, "peis": PEIS, "gcpl": GCPL,
}
