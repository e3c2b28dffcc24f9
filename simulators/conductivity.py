"""Ionic conductivity of LiPF6 in EC/DMC as a function of salt molality, solvent ratio and
temperature: the ground truth the simulated potentiostat's cell follows.

Model: the Casteel–Amis equation (J. F. Casteel, E. S. Amis, "Specific conductance of
concentrated solutions of magnesium salts in water–ethanol system", J. Chem. Eng. Data 17
(1972) 55–59), written as

    σ(m) = σ_max · (m/μ)^a · exp(b (m − μ)² − a (m − μ)/μ)

with σ_max the maximum conductivity, μ the molality where it occurs, and a, b shape
parameters. Like M. S. Ding et al. ("Change of conductivity with salt content, solvent
composition, and temperature for electrolytes of LiPF6 in ethylene carbonate–ethyl methyl
carbonate", J. Electrochem. Soc. 148 (2001) A1196), the parameters are made functions of the
solvent mass fraction and of temperature, which gives a conductivity "dome" over
(molality, solvent ratio) that sinks and moves towards lower salt content when it gets cold.

The parameter surfaces below are labctl's smooth approximations chosen to reproduce the
magnitudes reported for LiPF6 in EC/DMC (about 11 mS/cm near 1 mol/kg at 25 °C for EC:DMC
1:1 by mass, roughly doubling at 60 °C); they are not a published fit. σ_max follows a
Vogel–Fulcher–Tammann temperature law. Without salt only a trace conductivity remains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: trace conductivity of the neat solvent blend (S/m)
SOLVENT_SIGMA_S_M = 1e-7
#: LiPF6 molar mass (g/mol), used when the world does not state one
LIPF6_MOLAR_MASS = 151.905

_SIGMA_REF_S_M = 1.16  # σ_max at the best solvent ratio and 25 °C
_W_OPT = 0.45  # EC mass fraction of the solvent at which σ_max peaks
_W_WIDTH = 0.5  # width of the solvent-ratio dome
_VTF_B_K = 400.0  # pseudo-activation temperature of the VTF law
_VTF_T0_K = 170.0  # ideal glass transition temperature of the VTF law
_T_REF_K = 298.15


@dataclass(frozen=True)
class CasteelAmis:
    """Parameters of the Casteel–Amis equation at one solvent ratio and temperature."""

    sigma_max_s_m: float
    mu_mol_kg: float
    a: float
    b: float

    def sigma(self, molality_mol_kg: float) -> float:
        m = max(0.0, float(molality_mol_kg))
        if m == 0.0:
            return 0.0
        mu = self.mu_mol_kg
        return self.sigma_max_s_m * (m / mu) ** self.a * math.exp(
            self.b * (m - mu) ** 2 - self.a * (m - mu) / mu
        )


def parameters(ec_mass_fraction: float, temperature_c: float) -> CasteelAmis:
    """Casteel–Amis parameters for a solvent with this EC mass fraction (EC/(EC+DMC)) and
    temperature."""
    w = min(1.0, max(0.0, float(ec_mass_fraction)))
    t_k = float(temperature_c) + 273.15
    if t_k <= _VTF_T0_K + 1.0:
        vtf = 0.0
    else:
        vtf = math.exp(-_VTF_B_K / (t_k - _VTF_T0_K) + _VTF_B_K / (_T_REF_K - _VTF_T0_K))
    dome = math.exp(-(((w - _W_OPT) / _W_WIDTH) ** 2))
    sigma_max = _SIGMA_REF_S_M * dome * vtf
    # the maximum moves to lower salt content when the solvent gets more viscous (more EC,
    # colder), as Ding et al. observed for EC/EMC
    mu = 1.05 + 0.004 * (t_k - _T_REF_K) - 0.30 * (w - 0.5)
    mu = min(2.0, max(0.4, mu))
    a = 0.90 + 0.10 * (w - 0.5)
    b = -0.15 - 0.05 * (w - 0.5)
    return CasteelAmis(sigma_max_s_m=sigma_max, mu_mol_kg=mu, a=a, b=b)


def conductivity_s_m(molality_mol_kg: float, ec_mass_fraction: float,
                     temperature_c: float = 25.0) -> float:
    """The TRUE ionic conductivity (S/m) of LiPF6 at this molality (mol per kg of solvent)
    in EC/DMC with this EC mass fraction, at this temperature."""
    return SOLVENT_SIGMA_S_M + parameters(ec_mass_fraction, temperature_c).sigma(molality_mol_kg)


def optimum(ec_mass_fraction: float | None = None,
            temperature_c: float = 25.0) -> tuple[float, float, float]:
    """The best electrolyte: (molality mol/kg, EC mass fraction, σ S/m). With a given EC
    fraction only the molality is optimised (the maximum is at m = μ by construction)."""
    if ec_mass_fraction is None:
        w = _W_OPT
        best = (0.0, w, -1.0)
        # the dome's ridge: a fine scan of w, then the analytic maximum in m
        for i in range(1001):
            wi = i / 1000
            p = parameters(wi, temperature_c)
            s = conductivity_s_m(p.mu_mol_kg, wi, temperature_c)
            if s > best[2]:
                best = (p.mu_mol_kg, wi, s)
        return best
    p = parameters(ec_mass_fraction, temperature_c)
    return p.mu_mol_kg, float(ec_mass_fraction), conductivity_s_m(
        p.mu_mol_kg, ec_mass_fraction, temperature_c
    )


@dataclass(frozen=True)
class Electrolyte:
    """What the cell sees: salt molality, EC mass fraction, temperature, liquid present."""

    molality_mol_kg: float
    ec_mass_fraction: float
    temperature_c: float
    wet: bool = True

    @property
    def conductivity_s_m(self) -> float:
        if not self.wet:
            return 0.0
        return conductivity_s_m(self.molality_mol_kg, self.ec_mass_fraction, self.temperature_c)


def electrolyte_from_contents(
    contents_g: dict[str, float],
    temperature_c: float,
    *,
    liquid: set[str],
    salt: str = "LiPF6",
    ec: str = "EC",
    salt_molar_mass: float = LIPF6_MOLAR_MASS,
) -> Electrolyte:
    """Molality and solvent ratio from grams per material. Every liquid counts as solvent;
    the EC fraction is EC over all solvent mass (DMC and anything else dilute it)."""
    solvent_g = sum(g for m, g in contents_g.items() if m in liquid and m != salt)
    if solvent_g <= 1e-9:
        return Electrolyte(0.0, 0.0, temperature_c, wet=False)
    salt_mol = contents_g.get(salt, 0.0) / salt_molar_mass
    molality = salt_mol / (solvent_g / 1000.0)
    w = contents_g.get(ec, 0.0) / solvent_g
    return Electrolyte(molality, w, temperature_c, wet=True)
