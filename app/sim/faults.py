"""Fault injection: a seeded plan of per-endpoint faults and scheduled outages (SPEC §10).

Rules are tried in plan order; each rule whose endpoint matches draws once from the plan's own
``random.Random(seed)``, and the first that hits decides (``latency`` adds its delay and the
search goes on). The same plan and the same request sequence give the same faults.
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class FaultKind(StrEnum):
    LATENCY = "latency"
    HTTP_500 = "http_500"                        # not applied
    DISCONNECTED_1001 = "disconnected_1001"      # not applied
    THROTTLED_1008 = "throttled_1008"            # not applied
    SERVICE_UNAVAILABLE = "service_unavailable"  # 503 "Service Unavailable.", not applied
    UNKNOWN_503 = "unknown_503"                  # 503 "Unknown error…", applied
    TIMEOUT_1007 = "timeout_1007"                # applied
    RESET_AFTER_APPLY = "reset_after_apply"      # connection dropped after applying
    HANG = "hang"                                # applied, answer held for hang_s
    DELAYED_VISIBILITY = "delayed_visibility"    # applied; GET says -2013 for a while
    PARTIAL_FILL = "partial_fill"                # a MARKET order fills fill_ratio, the rest expires


NOT_APPLIED = frozenset({FaultKind.HTTP_500, FaultKind.DISCONNECTED_1001,
                         FaultKind.THROTTLED_1008, FaultKind.SERVICE_UNAVAILABLE})


class FaultPlanError(ValueError):
    """A fault plan is malformed; the message names the field."""


@dataclass(frozen=True, slots=True)
class FaultRule:
    endpoint: str
    fault: FaultKind
    probability: float
    latency_ms: float = 0.0
    hang_s: float = 0.0
    visibility_delay_s: float = 0.0
    fill_ratio: float = 0.5

    def matches(self, endpoint: str) -> bool:
        return self.endpoint == "*" or self.endpoint == endpoint

    def to_json(self) -> dict[str, object]:
        """The rule with defaults filled in; ``fill_ratio`` only where it applies."""
        body: dict[str, object] = {
            "endpoint": self.endpoint, "fault": str(self.fault),
            "probability": self.probability, "latency_ms": self.latency_ms,
            "hang_s": self.hang_s, "visibility_delay_s": self.visibility_delay_s}
        if self.fault is FaultKind.PARTIAL_FILL:
            body["fill_ratio"] = self.fill_ratio
        return body


@dataclass(frozen=True, slots=True)
class Outage:
    start_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class FaultPlan:
    seed: int = 0
    rules: tuple[FaultRule, ...] = ()
    outages: tuple[Outage, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "rules": [r.to_json() for r in self.rules],
            "outages": [{"start_s": o.start_s, "duration_s": o.duration_s}
                        for o in self.outages],
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """What the plan decided for one request."""

    fault: FaultKind | None = None
    latency_s: float = 0.0
    hang_s: float = 0.0
    visibility_delay_s: float = 0.0
    #: For ``partial_fill``: the share of a MARKET order's quantity that fills.
    fill_ratio: float | None = None


@dataclass(slots=True)
class ActiveFaults:
    """A plan in force: its RNG and the time it was set (outages are relative to that)."""

    plan: FaultPlan = field(default_factory=FaultPlan)
    set_at: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    @classmethod
    def start(cls, plan: FaultPlan, now: float) -> ActiveFaults:
        return cls(plan, now, random.Random(plan.seed))

    def in_outage(self, now: float) -> bool:
        elapsed = now - self.set_at
        return any(o.start_s <= elapsed < o.start_s + o.duration_s for o in self.plan.outages)

    def decide(self, endpoint: str) -> Decision:
        latency = 0.0
        for rule in self.plan.rules:
            if not rule.matches(endpoint) or self.rng.random() >= rule.probability:
                continue
            if rule.fault is FaultKind.LATENCY:
                latency += rule.latency_ms / 1000
                continue
            return Decision(rule.fault, latency, rule.hang_s, rule.visibility_delay_s,
                            rule.fill_ratio if rule.fault is FaultKind.PARTIAL_FILL else None)
        return Decision(None, latency)


_RULE_NUMBERS = ("latency_ms", "hang_s", "visibility_delay_s")


def fault_plan_from_mapping(data: Mapping[str, Any]) -> FaultPlan:
    """Validate a plan (TOML or JSON shape); every error names the offending field."""
    if not isinstance(data, Mapping):
        raise FaultPlanError("plan: must be an object")
    unknown = set(data) - {"seed", "rules", "outages"}
    if unknown:
        raise FaultPlanError(f"{sorted(unknown)[0]}: unknown key")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FaultPlanError("seed: must be an integer")
    rules = tuple(_rule(item, f"rules[{i}]") for i, item in enumerate(_list(data, "rules")))
    outages = tuple(_outage(item, f"outages[{i}]")
                    for i, item in enumerate(_list(data, "outages")))
    return FaultPlan(seed, rules, outages)


def load_fault_plan(path: Path) -> FaultPlan:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FaultPlanError(f"{path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise FaultPlanError(f"{path}: invalid TOML: {exc}") from exc
    return fault_plan_from_mapping(data)


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise FaultPlanError(f"{key}: must be an array")
    return value


def _number(item: Mapping[str, Any], key: str, path: str, default: float = 0.0) -> float:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultPlanError(f"{path}.{key}: must be a non-negative number")
    return float(value)


def _rule(item: object, path: str) -> FaultRule:
    if not isinstance(item, Mapping):
        raise FaultPlanError(f"{path}: must be an object")
    unknown = set(item) - {"endpoint", "fault", "probability", "fill_ratio", *_RULE_NUMBERS}
    if unknown:
        raise FaultPlanError(f"{path}.{sorted(unknown)[0]}: unknown key")
    for key in ("endpoint", "fault", "probability"):
        if key not in item:
            raise FaultPlanError(f"{path}.{key}: required")
    endpoint = item["endpoint"]
    if not isinstance(endpoint, str) or not (
            endpoint == "*" or (len(endpoint.split(" ")) == 2 and " /" in endpoint)):
        raise FaultPlanError(f"{path}.endpoint: must be \"METHOD /path\" or \"*\"")
    try:
        kind = FaultKind(item["fault"])
    except (ValueError, TypeError):
        names = ", ".join(k.value for k in FaultKind)
        raise FaultPlanError(f"{path}.fault: must be one of {names}") from None
    probability = _number(item, "probability", path)
    if probability > 1:
        raise FaultPlanError(f"{path}.probability: must be between 0 and 1")
    fill_ratio = _number(item, "fill_ratio", path, 0.5)
    if not 0 < fill_ratio < 1:
        raise FaultPlanError(f"{path}.fill_ratio: must be between 0 and 1 (exclusive)")
    method, _, route = endpoint.partition(" ")
    return FaultRule(
        endpoint if endpoint == "*" else f"{method.upper()} {route}", kind, probability,
        latency_ms=_number(item, "latency_ms", path), hang_s=_number(item, "hang_s", path),
        visibility_delay_s=_number(item, "visibility_delay_s", path), fill_ratio=fill_ratio,
    )


def _outage(item: object, path: str) -> Outage:
    if not isinstance(item, Mapping):
        raise FaultPlanError(f"{path}: must be an object")
    unknown = set(item) - {"start_s", "duration_s"}
    if unknown:
        raise FaultPlanError(f"{path}.{sorted(unknown)[0]}: unknown key")
    if "duration_s" not in item:
        raise FaultPlanError(f"{path}.duration_s: required")
    return Outage(_number(item, "start_s", path), _number(item, "duration_s", path))
