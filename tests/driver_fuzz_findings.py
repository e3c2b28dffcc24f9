"""Driver bugs found by tests/test_fuzz_drivers.py that their owners have not fixed yet.

Not collected by a plain `pytest` run (the name does not start with `test_`), so the suite
stays green while the bugs wait; run it explicitly to see them fail:

    .venv/bin/python -m pytest tests/driver_fuzz_findings.py -q

When a driver is fixed, move its fuzz test back into tests/test_fuzz_drivers.py and take
its name out of KNOWN_BAD there. Each finding below is the smallest reply script that shows
the bug (the instrument's healthy answers, then one odd reply).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from test_fuzz_drivers import (
    BALANCE,
    FUZZ,
    QUANTOS,
    SICS_REPLIES,
    TRI_REPLIES,
    TRICONTINENT,
    Fields,
    Normal,
    SicsAnswer,
    run,
    scripts,
    sweep,
)


# --------------------------------------------------------------------------- TriContinent
def test_tricontinent_status_with_a_non_numeric_plunger_position() -> None:
    """drivers/tricontinent.py `status()` (and `plunger_volume_l()`, `_position_steps()`)
    do `int(answer.data)` on the `?` report: an answer `/0`x` ETX (valid frame, data 'x')
    raises ValueError instead of ProtocolError."""
    run(TRICONTINENT, [Normal()] * 4 + [Fields(None, "x")])


def test_tricontinent_one_odd_reply_at_every_exchange() -> None:
    found = sweep(TRICONTINENT)
    assert not found, "\n".join(found)


@FUZZ
@given(replies=TRI_REPLIES)
def test_tricontinent_driver_survives_any_reply(replies: list[Any]) -> None:
    run(TRICONTINENT, replies)


# --------------------------------------------------------------------------- MT-SICS
def test_mettler_identify_with_an_empty_i2_answer() -> None:
    """drivers/mt_sics.py `identify()`: `I2 A` with no value (a valid MT-SICS line) makes
    `SicsReply.text()` index an empty `values` list: IndexError instead of ProtocolError.
    The same holds for `I3 A` and `I4 A`."""
    run(BALANCE, [Normal()] * 2 + [SicsAnswer("A", ())])


def test_quantos_identify_with_an_empty_i2_answer() -> None:
    run(QUANTOS, [Normal()] * 2 + [SicsAnswer("A", ())])


def test_mettler_one_odd_reply_at_every_exchange() -> None:
    found = sweep(BALANCE) + sweep(QUANTOS)
    assert not found, "\n".join(found)


@FUZZ
@given(replies=scripts(SICS_REPLIES))
def test_mettler_balance_driver_survives_any_reply(replies: list[Any]) -> None:
    run(BALANCE, replies)


@FUZZ
@given(replies=scripts(SICS_REPLIES))
def test_quantos_driver_survives_any_reply(replies: list[Any]) -> None:
    run(QUANTOS, replies)
