"""A UV-Vis spectrometer for labctl, as a plugin: the `spectrometer` capability, the
driver of the UVV ASCII protocol (README.md), its simulator, the `scan` action and the
`absorbance_peak` analysis. Nothing in labctl names it: its pyproject's entry points do."""

__version__ = "0.1.0"
