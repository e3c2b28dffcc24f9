"""Faults labctl does not survive yet, found by tests/test_fault_injection.py; each waits for
a fix in someone else's module (not collected by a plain `pytest` run; run it explicitly):

    .venv/bin/python -m pytest tests/fault_injection_findings.py -q

1. labctl/actions.py: a temperature hold whose heater fails as the hold starts completes.
The hold's watch fails a block that leaves its soak band, but one that never reaches it
(heater dead from the first second; the Omega's PV stays at ambient, 22 °C, for a 40 °C
hold of 5 min, about three time constants) is not noticed.

When fixed, move these tests into tests/test_fault_injection.py.
"""

from __future__ import annotations
