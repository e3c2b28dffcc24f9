"""Acid-catalysed TEOS sol-gel chemistry of the simulated world (a published-form model).

Tetraethyl orthosilicate hydrolyses with water (Si(OEt)4 + 4 H2O -> Si(OH)4 + 4 EtOH) and
the silanols condense to a silica network; the sol gels when the network spans the vessel.
The model keeps one number per vessel, its progress p towards the gel point (0 fresh sol,
1 gelled), advanced at the rate

    dp/dt = k_ref [H2O]^a [H+]^b [Si] exp(-Ea/R (1/T - 1/T_ref))

the power-law, Arrhenius form of the hydrolysis rate (first order in water and in silicon,
order about 1/2 in the acid for HCl at these concentrations: Brinker & Scherer, *Sol-Gel
Science* (1990), ch. 3; Aelion, Loebel & Eirich, J. Am. Chem. Soc. 72 (1950) 5705), with
the gel time t_gel = 1/k at constant conditions (gelation is the integrated rate reaching
the gel point), and an activation energy of the gelation of ~55 kJ/mol (Colby, Osaka &
Mackenzie, J. Non-Cryst. Solids 82 (1986) 37). Without acid the rate falls to that of
neutral water ([H+] = 1e-7 mol/L): a sol with no catalyst does not gel within a run.

The viscosity diverges at the gel point as eta/eta_0 = (1 - p)^-s, the critical form of
percolation (eta ~ (t_gel - t)^-s, s ~ 0.7-1.3; Brinker & Scherer ch. 5); s = 1 here, so the
reciprocal viscosity falls linearly to zero at the gel time (the usual way a gel time is
read from a viscosity trace). k_ref is chosen, not fitted: the default coating recipe
(TEOS:EtOH:H2O:HCl = 1:4:4:0.01 at 40 °C) gels in about three hours.

Species are found by CAS number (TEOS 78-10-4, water 7732-18-5, HCl 7647-01-0), else by
material id. An aqueous solution (hydrochloric acid, 1 mol/L) declares its
`concentration_mol_l`; the rest of its mass is water.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulators.world import Vessel, World

R = 8.314462618  # J/(mol K)
EA_J_MOL = 55_000.0
T_REF_K = 298.15
K_REF = 1.63e-5  # 1/s per (mol/L)^(a + b + 1), at T_REF
ORDER_WATER = 1.0
ORDER_ACID = 0.5
NEUTRAL_H_MOL_L = 1e-7
EXPONENT = 1.0  # s of eta/eta_0 = (1 - p)^-s
MAX_RELATIVE_VISCOSITY = 100.0  # a gelled sol holds the stir bar: the reading saturates
M_WATER = 18.015
M_HCL = 36.46

TEOS_CAS, WATER_CAS, HCL_CAS = "78-10-4", "7732-18-5", "7647-01-0"
_IDS = {TEOS_CAS: ("TEOS",), WATER_CAS: ("H2O", "water"), HCL_CAS: ("HCl",)}


def rate_per_s(water_mol_l: float, acid_mol_l: float, si_mol_l: float,
               temperature_c: float) -> float:
    """dp/dt of the model (1/s); 0 without water or silicon."""
    if water_mol_l <= 0 or si_mol_l <= 0:
        return 0.0
    h = max(acid_mol_l, NEUTRAL_H_MOL_L)
    t_k = temperature_c + 273.15
    return (K_REF * water_mol_l ** ORDER_WATER * h ** ORDER_ACID * si_mol_l
            * math.exp(-EA_J_MOL / R * (1.0 / t_k - 1.0 / T_REF_K)))


def gel_time_s(water_mol_l: float, acid_mol_l: float, si_mol_l: float,
               temperature_c: float) -> float:
    """Gel time of a fresh sol held at constant conditions (inf when it never gels)."""
    k = rate_per_s(water_mol_l, acid_mol_l, si_mol_l, temperature_c)
    return 1.0 / k if k > 0 else math.inf


def relative_viscosity(progress: float) -> float:
    """eta / eta_0 of the sol at progress p (capped once gelled)."""
    if progress >= 1.0:
        return MAX_RELATIVE_VISCOSITY
    return min(MAX_RELATIVE_VISCOSITY, (1.0 - progress) ** -EXPONENT)


def _role(world: World, mid: str) -> str | None:
    m = world.materials.get(mid)
    cas = m.cas if m is not None else None
    for role, ids in _IDS.items():
        if cas == role or (cas is None and mid in ids):
            return role
    return None


def concentrations(world: World, vessel: Vessel) -> tuple[float, float, float]:
    """([H2O], [H+], [Si]) in mol/L of the vessel's liquid."""
    volume_l = world.volume_l(vessel.name)
    if volume_l <= 0:
        return 0.0, 0.0, 0.0
    water = acid = si = 0.0
    for mid, grams in vessel.contents_g.items():
        role = _role(world, mid)
        if role is None:
            continue
        m = world.materials[mid]
        if role == TEOS_CAS:
            si += grams / (m.molar_mass_g_mol or 208.33)
        elif role == WATER_CAS:
            water += grams / (m.molar_mass_g_mol or M_WATER)
        elif m.concentration_mol_l:  # an aqueous solution of HCl
            n = grams / (m.density_g_ml * 1000.0) * m.concentration_mol_l
            acid += n
            water += max(0.0, grams - n * (m.molar_mass_g_mol or M_HCL)) / M_WATER
        else:
            acid += grams / (m.molar_mass_g_mol or M_HCL)
    return water / volume_l, acid / volume_l, si / volume_l


def advance(world: World, vessel: Vessel, dt_s: float) -> None:
    """Advance the vessel's gel progress by dt_s at its present composition and
    temperature (hydrolysis consumes water, a second-order effect left out)."""
    water, acid, si = concentrations(world, vessel)
    k = rate_per_s(water, acid, si, vessel.temperature_c)
    if k > 0:
        vessel.gel_progress = min(2.0, vessel.gel_progress + k * dt_s)
