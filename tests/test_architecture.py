"""The dependency rules of SPEC §3.2, checked on every module's syntax tree (no imports run).

Each rule is one test; a failure names the module, the line and what it broke.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"
BENCH = ROOT / "bench"

MAX_LINES = 500
#: The component classes only the composition root builds (SPEC §3.2).
COMPONENTS = frozenset({"Gateway", "WeightLimiter", "CircuitBreaker", "RetryPolicy", "Executor",
                        "OrderSender", "Protector", "Journal", "SignalBus"})
#: Where components may be built: the composition root and its factory module.
COMPOSITION_ROOT = frozenset({"app/daemon.py", "app/factory.py"})
#: Benchmarks are measurement harnesses like tests; these build a component on purpose.
BENCH_BUILDS = {("bench/limiter.py", "WeightLimiter"): "measures the limiter class alone",
                ("bench/crash.py", "Journal"): "reads the journal a killed daemon left",
                ("bench/broker.py", "Journal"): "reads the journal the killed daemons left"}


@dataclass(frozen=True, slots=True)
class Import:
    module: str     # the importing module, e.g. "app.intake.service"
    path: str       # relative to the repository
    line: int
    target: str     # what is imported, absolute, e.g. "app.exchange.symbols"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources(*roots: Path) -> Iterator[tuple[Path, ast.Module]]:
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(path: Path, tree: ast.Module) -> Iterator[Import]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    rel = str(path.relative_to(ROOT))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, rel, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield Import(module, rel, node.lineno, base)
            for alias in node.names:  # `from app import sim` imports the module app.sim
                yield Import(module, rel, node.lineno, f"{base}.{alias.name}")


def _all_imports() -> list[Import]:
    return [imp for path, tree in _sources(APP) for imp in _imports(path, tree)]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _app_modules() -> set[str]:
    return {_module_name(path) for path in APP.rglob("*.py")}


def _violations(importer: str, allowed: tuple[str, ...] | None = None,
                forbidden: tuple[str, ...] = ()) -> list[str]:
    """Imports of app modules by modules in `importer` that are not `allowed` (None: any) or
    are `forbidden`. Imports of the importer's own package always pass."""
    modules = _app_modules()
    found = []
    for imp in _all_imports():
        if not _within(imp.module, importer) or not _within(imp.target, "app"):
            continue
        if imp.target not in modules and imp.target.rpartition(".")[0] in modules:
            continue  # `from app.x import name`: the module app.x is reported on its own
        if _within(imp.target, importer) or imp.target == "app":
            continue
        bad = (allowed is not None and not any(_within(imp.target, a) for a in allowed)) or any(
            _within(imp.target, f) for f in forbidden)
        if bad:
            found.append(f"{imp.path}:{imp.line} imports {imp.target}")
    return found


def test_leaf_modules_import_nothing_from_app() -> None:
    """domain, errors and clock import nothing else from app."""
    found = [v for leaf in ("app.domain", "app.errors", "app.clock")
             for v in _violations(leaf, allowed=())]
    assert found == []


def test_sim_imports_nothing_from_the_rest_of_app() -> None:
    """The simulator stands in for Binance: it shares no code with the client."""
    assert _violations("app.sim", allowed=()) == []


def test_resilience_imports_only_clock_and_errors() -> None:
    """resilience is generic: it knows nothing of Binance, the journal or logging."""
    assert _violations("app.resilience", allowed=("app.clock", "app.errors")) == []


def test_intake_imports_neither_exchange_nor_execution() -> None:
    """What intake needs of the exchange (is this symbol tradable?) is passed in as a callable."""
    assert _violations("app.intake", forbidden=("app.exchange", "app.execution")) == []


def test_observability_never_imports_cli() -> None:
    assert _violations("app.observability", forbidden=("app.cli",)) == []


def test_python_binance_only_in_exchange() -> None:
    """The exchange package is the only one that imports python-binance."""
    found = [f"{imp.path}:{imp.line} imports {imp.target}" for imp in _all_imports()
             if _within(imp.target, "binance") and not _within(imp.module, "app.exchange")]
    assert found == []


def _reads_environment(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id == "os" and node.attr in {"environ", "getenv", "environb"}
    if isinstance(node, ast.ImportFrom) and node.module == "os":
        return any(a.name in {"environ", "getenv", "environb"} for a in node.names)
    return False


def test_environment_read_only_in_config() -> None:
    """config.py is the only module that reads os.environ."""
    found = [f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
             for path, tree in _sources(APP) if path != APP / "config.py"
             for node in ast.walk(tree) if _reads_environment(node)]
    assert found == []


def test_no_module_over_the_split_point() -> None:
    """SPEC §3.1: a module past ~500 lines is split along a real seam."""
    found = [f"{path.relative_to(ROOT)}: {n} lines" for path in sorted(APP.rglob("*.py"))
             if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert found == []


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def test_components_are_built_only_by_the_composition_root() -> None:
    """Gateway, limiter, breakers, retry policy, executor, sender, protector, journal and bus
    are instantiated in daemon.py / factory.py only (tests may build their own)."""
    found = []
    for path, tree in _sources(APP, BENCH):
        rel = str(path.relative_to(ROOT))
        if rel in COMPOSITION_ROOT:
            continue
        for node in ast.walk(tree):
            name = _called_name(node) if isinstance(node, ast.Call) else None
            if name in COMPONENTS and (rel, name) not in BENCH_BUILDS:
                found.append(f"{rel}:{getattr(node, 'lineno', 0)} builds {name}")
    assert found == []


def test_no_cached_singletons() -> None:
    """No ``lru_cache``/``cache`` decorators standing in for wiring (no cached clients)."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path, tree in _sources(APP)
             for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
             for deco in node.decorator_list
             if (deco.id if isinstance(deco, ast.Name) else
                 deco.attr if isinstance(deco, ast.Attribute) else None)
             in {"lru_cache", "cache"}]
    assert found == []


@pytest.mark.parametrize("rule", ["sim", "resilience", "intake", "binance", "component"])
def test_the_checks_catch_a_broken_rule(rule: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rule fails on a module written to break it (the checks are not vacuous)."""
    bad = {
        "sim": ("app/sim/bad.py", "from app.domain import Side\n"),
        "resilience": ("app/resilience/bad.py", "from app.journal import Journal\n"),
        "intake": ("app/intake/bad.py", "from app.exchange import symbols\n"),
        "binance": ("app/execution/bad.py", "import binance.client\n"),
        "component": ("app/execution/bad.py", "x = OrderSender(1, 2, 3)\n"),
    }[rule]
    fake = tmp_path / "repo"
    for src in APP.rglob("*.py"):
        dst = fake / src.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    (fake / bad[0]).write_text(bad[1], encoding="utf-8")
    (fake / "bench").mkdir()
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "ROOT", fake)
    monkeypatch.setattr(module, "APP", fake / "app")
    monkeypatch.setattr(module, "BENCH", fake / "bench")
    check = {
        "sim": test_sim_imports_nothing_from_the_rest_of_app,
        "resilience": test_resilience_imports_only_clock_and_errors,
        "intake": test_intake_imports_neither_exchange_nor_execution,
        "binance": test_python_binance_only_in_exchange,
        "component": test_components_are_built_only_by_the_composition_root,
    }[rule]
    with pytest.raises(AssertionError):
        check()
