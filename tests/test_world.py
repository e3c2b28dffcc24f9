"""The simulated world conserves amounts and refuses impossible moves."""

from __future__ import annotations

import pytest

from simulators.world import World, WorldFault


@pytest.fixture
def world() -> World:
    return World.from_spec({
        "materials": {"DMC": {"density_g_ml": 1.07}, "LiPF6": {"phase": "solid"}},
        "vessels": {
            "res": {"kind": "reservoir", "capacity": "100 mL", "contents": {"DMC": "50 mL"}},
            "vial": {"capacity": "10 mL", "empty_mass_g": 12.0},
        },
    })


def test_moving_liquid_conserves_mass(world: World) -> None:
    before = world.total_mass_g()
    world.move_volume("res", "vial", 0.004)
    assert world.volume_l("vial") == pytest.approx(0.004)
    assert world.mass_g("vial") == pytest.approx(12.0 + 4 * 1.07)
    assert world.volume_l("res") == pytest.approx(0.046)
    assert world.total_mass_g() == pytest.approx(before)


def test_overflow_and_empty_are_faults_and_change_nothing(world: World) -> None:
    with pytest.raises(WorldFault) as err:
        world.move_volume("res", "vial", 0.011)
    assert err.value.kind == "overflow"
    with pytest.raises(WorldFault) as err:
        world.move_volume("vial", "res", 0.001)
    assert err.value.kind == "empty"
    assert world.volume_l("res") == pytest.approx(0.05)
    assert world.volume_l("vial") == 0


def test_routes_lead_through_a_selector(world: World) -> None:
    with pytest.raises(WorldFault):
        world.move_volume("res", "@valve", 0.001)
    world.set_route("valve", "vial")
    world.move_volume("res", "@valve", 0.001)
    assert world.volume_l("vial") == pytest.approx(0.001)


def test_solids_add_mass_not_volume(world: World) -> None:
    world.move_volume("res", "vial", 0.002)
    world.add_solid("vial", "LiPF6", 0.3)
    assert world.volume_l("vial") == pytest.approx(0.002)
    assert world.composition("vial")["LiPF6"] == pytest.approx(0.3)
    # a mixed liquid carries its dissolved salt along
    world.move_volume("vial", "res", 0.001)
    assert world.composition("res")["LiPF6"] == pytest.approx(0.15)


def test_saved_state_rebuilds_the_same_world_through_json(world: World) -> None:
    """What a simulated run saves (sim_world.json) gives back every gram, temperature and
    route: a resumed run measures the vial the run left."""
    import json

    world.set_route("sel", "vial")
    world.move_volume("res", "@sel", 0.004)
    world.add_solid("vial", "LiPF6", 0.6)
    world.set_temperature("vial", 25.0)
    again = World.from_state(json.loads(json.dumps(world.to_state())))
    assert again.composition("vial") == world.composition("vial")
    assert again.vessel("vial").temperature_c == 25.0
    assert again.resolve("@sel") == "vial"
    assert again.total_mass_g() == pytest.approx(world.total_mass_g())
    assert again.volume_l("vial") == pytest.approx(world.volume_l("vial"))
    again.move_volume("vial", "res", 0.001)  # a working world, not a copy of numbers
    assert again.total_mass_g() == pytest.approx(world.total_mass_g())
