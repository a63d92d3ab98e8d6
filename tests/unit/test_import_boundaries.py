"""The serving install must not need PyTorch or the export package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"
FORBIDDEN = ("torch", "export", "torchvision", "safetensors", "load", "clients", "tests")


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_service_module_imports_torch_export_load_clients_or_tests() -> None:
    offenders = {
        str(path.relative_to(SERVICES.parent)): sorted(_imported_roots(path) & set(FORBIDDEN))
        for path in SERVICES.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_loading_the_service_pulls_in_neither_torch_nor_export() -> None:
    """Import every services module in a fresh interpreter and inspect sys.modules."""
    modules = [
        ".".join(path.relative_to(SERVICES.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in SERVICES.rglob("*.py")
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(r for r in {FORBIDDEN!r} if r in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SERVICES.parent, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_use_cases_and_pipelines_do_not_import_the_web_framework() -> None:
    """Use cases and pipelines are plain functions: BentoML and Starlette stay in service.py and http/."""
    framework = {"bentoml", "starlette", "_bentoml_sdk", "_bentoml_impl"}
    offenders = {
        str(path.relative_to(SERVICES.parent)): sorted(_imported_roots(path) & framework)
        for room in ("usecases", "pipelines", "codecs", "runtime", "jobs")
        for path in (SERVICES / room).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_export_and_load_never_import_tests_and_export_never_imports_load_or_clients() -> None:
    """The arrows of the README's Layout: export is the build side (it may use services' contract
    and preprocessing), load runs the service from outside (it may use anything), tests are leaves."""
    root = SERVICES.parent
    rules = {"export": {"load", "clients", "tests"}, "load": {"tests"}, "clients": {"export", "load", "tests"}}
    offenders = {
        str(path.relative_to(root)): sorted(_imported_roots(path) & forbidden)
        for package, forbidden in rules.items()
        for path in (root / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
