"""Device-side simulators of labctl's instrument protocols, and the simulated world.

Depends on labctl's clock and serving helpers only — never on drivers/.
"""

from simulators.base import Faults, Simulator
from simulators.bench import SimulatedBench, start_simulated_bench
from simulators.registry import kinds, simulator_class
from simulators.serving import Served, serve
from simulators.world import World, WorldFault

__all__ = [
    "Faults",
    "Served",
    "SimulatedBench",
    "Simulator",
    "World",
    "WorldFault",
    "kinds",
    "serve",
    "simulator_class",
    "start_simulated_bench",
]
