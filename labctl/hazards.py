"""Chemical hazards for the SOP: GHS hazard statements (H-codes, and the EU's EUH codes), CAS
registry numbers, and the precautions and PPE that follow from them.

The bench config declares per material its `cas` and `ghs` codes (from the supplier's
safety data sheet); the SOP lists them and derives what the operator must wear and where
the material must be handled. The texts are the GHS (Rev. 9) / CLP wording.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: GHS / CLP hazard statements labctl knows the text of (codes outside this table are
#: still accepted when well formed, and shown without a text).
H_STATEMENTS: dict[str, str] = {
    "H200": "Unstable explosive",
    "H220": "Extremely flammable gas",
    "H222": "Extremely flammable aerosol",
    "H224": "Extremely flammable liquid and vapour",
    "H225": "Highly flammable liquid and vapour",
    "H226": "Flammable liquid and vapour",
    "H228": "Flammable solid",
    "H250": "Catches fire spontaneously if exposed to air",
    "H260": "In contact with water releases flammable gases which may ignite spontaneously",
    "H261": "In contact with water releases flammable gas",
    "H270": "May cause or intensify fire; oxidiser",
    "H271": "May cause fire or explosion; strong oxidiser",
    "H272": "May intensify fire; oxidiser",
    "H280": "Contains gas under pressure; may explode if heated",
    "H290": "May be corrosive to metals",
    "H300": "Fatal if swallowed",
    "H301": "Toxic if swallowed",
    "H302": "Harmful if swallowed",
    "H304": "May be fatal if swallowed and enters airways",
    "H310": "Fatal in contact with skin",
    "H311": "Toxic in contact with skin",
    "H312": "Harmful in contact with skin",
    "H314": "Causes severe skin burns and eye damage",
    "H315": "Causes skin irritation",
    "H317": "May cause an allergic skin reaction",
    "H318": "Causes serious eye damage",
    "H319": "Causes serious eye irritation",
    "H330": "Fatal if inhaled",
    "H331": "Toxic if inhaled",
    "H332": "Harmful if inhaled",
    "H334": "May cause allergy or asthma symptoms or breathing difficulties if inhaled",
    "H335": "May cause respiratory irritation",
    "H336": "May cause drowsiness or dizziness",
    "H340": "May cause genetic defects",
    "H341": "Suspected of causing genetic defects",
    "H350": "May cause cancer",
    "H351": "Suspected of causing cancer",
    "H360": "May damage fertility or the unborn child",
    "H361": "Suspected of damaging fertility or the unborn child",
    "H370": "Causes damage to organs",
    "H371": "May cause damage to organs",
    "H372": "Causes damage to organs through prolonged or repeated exposure",
    "H373": "May cause damage to organs through prolonged or repeated exposure",
    "H400": "Very toxic to aquatic life",
    "H410": "Very toxic to aquatic life with long lasting effects",
    "H411": "Toxic to aquatic life with long lasting effects",
    "H412": "Harmful to aquatic life with long lasting effects",
    "EUH014": "Reacts violently with water",
    "EUH029": "Contact with water liberates toxic gas",
    "EUH031": "Contact with acids liberates toxic gas",
    "EUH066": "Repeated exposure may cause skin dryness or cracking",
    "EUH071": "Corrosive to the respiratory tract",
}

_CODE = re.compile(r"^(H[2-4]\d\d|EUH\d{3})$")
_CAS = re.compile(r"^(\d{2,7})-(\d{2})-(\d)$")


def check_code(code: str) -> str | None:
    """None when `code` is a well-formed GHS/EUH hazard statement code, else why not."""
    if not _CODE.match(code):
        return (f"{code!r} is not a GHS hazard statement code (H200…H499, or EUH000…EUH999; "
                "e.g. 'H225')")
    return None


def check_cas(cas: str) -> str | None:
    """None when `cas` is a CAS registry number whose check digit is right, else why not."""
    m = _CAS.match(cas)
    if not m:
        return f"{cas!r} is not a CAS registry number (digits-dd-d, e.g. '64-17-5')"
    digits = (m.group(1) + m.group(2))[::-1]
    check = sum(int(d) * (i + 1) for i, d in enumerate(digits)) % 10
    if check != int(m.group(3)):
        return f"{cas!r} has a wrong check digit (expected {check})"
    return None


def statement(code: str) -> str:
    """'H225: Highly flammable liquid and vapour' (the code alone when not in the table)."""
    text = H_STATEMENTS.get(code)
    return f"{code}: {text}" if text else code


@dataclass(frozen=True)
class Precaution:
    """What the operator must do or wear, because of which hazard codes."""

    what: str
    codes: frozenset[str]
    #: only for materials that hold fluorine (SMILES): a water-reactive fluoride gives HF
    fluoride: bool = False


#: precautions and PPE per hazard (the operator's minimum; the SDS has the full list)
PRECAUTIONS: tuple[Precaution, ...] = (
    Precaution("Safety glasses with side shields, a lab coat and nitrile gloves (always).",
               frozenset()),
    Precaution("Chemical splash goggles; a face shield when transferring by hand.",
               frozenset({"H314", "H318"})),
    Precaution("Safety goggles.", frozenset({"H319"})),
    Precaution("Chemical-resistant gloves rated for the material (check the SDS breakthrough "
               "time); change at once when splashed.",
               frozenset({"H311", "H312", "H314", "H315", "H317", "H310"})),
    Precaution("Moisture releases HF: keep calcium gluconate gel at hand; on skin contact "
               "rinse 5 min and apply the gel, seek medical help.",
               frozenset({"EUH014", "EUH029"}), fluoride=True),
    Precaution("Flammable: no ignition sources, earth containers, flame-retardant lab coat; "
               "keep away from the heated devices when not in a closed vessel.",
               frozenset({"H224", "H225", "H226", "H228"})),
    Precaution("Handle in a fume hood or a glovebox (inhalation hazard).",
               frozenset({"H330", "H331", "H332", "H334", "H335", "H336", "EUH071"})),
    Precaution("Keep dry: handle and store under inert dry gas (glovebox); reacts with "
               "water/moisture.", frozenset({"EUH014", "EUH029", "H260", "H261"})),
    Precaution("Avoid repeated exposure; do not eat or drink, wash hands after handling.",
               frozenset({"H301", "H302", "H370", "H371", "H372", "H373"})),
    Precaution("CMR substance: restricted use, keep exposure as low as possible.",
               frozenset({"H340", "H341", "H350", "H351", "H360", "H361"})),
    Precaution("Collect waste separately; nothing down the drain.",
               frozenset({"H400", "H410", "H411", "H412"})),
)


def precautions(codes_by_material: Mapping[str, Iterable[str]],
                smiles: Mapping[str, str | None] | None = None) -> list[tuple[str, list[str]]]:
    """(precaution, the materials that call for it) for the materials' hazard codes."""
    out: list[tuple[str, list[str]]] = []
    for p in PRECAUTIONS:
        if not p.codes:
            out.append((p.what, []))
            continue
        because = sorted(
            m for m, codes in codes_by_material.items()
            if p.codes & set(codes)
            and (not p.fluoride or "F" in re.sub(r"Fe|Fr|Fl|Fm", "", (smiles or {}).get(m) or "")))
        if because:
            out.append((p.what, because))
    return out
