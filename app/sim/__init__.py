"""The embedded Binance USDⓈ-M futures simulator (SPEC §10).

It stands in for Binance over real HTTP and shares no code with the client: nothing here
imports from the rest of ``app``.
"""

from app.sim.config import SimConfig, SimConfigError, SymbolSpec, load_sim_config
from app.sim.faults import (
    FaultKind,
    FaultPlan,
    FaultPlanError,
    fault_plan_from_mapping,
    load_fault_plan,
)
from app.sim.runner import SimServer, run_standalone
from app.sim.server import Simulator

__all__ = [
    "FaultKind",
    "FaultPlan",
    "FaultPlanError",
    "SimConfig",
    "SimConfigError",
    "SimServer",
    "Simulator",
    "SymbolSpec",
    "fault_plan_from_mapping",
    "load_fault_plan",
    "load_sim_config",
    "run_standalone",
]
