"""The house's rules, read from the imports (docs/architecture.md): services meet on the bus and
in the database, never by importing each other; shared/ is below them; the operator's tools in
cli/ are above them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SERVICES = ("api", "child", "tracker")


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service_and_no_tool(service: str) -> None:
    others = [f"services.{s}" for s in SERVICES if s != service]
    for path in modules(f"services/{service}"):
        wrong = {m for m in imports(path) if m.startswith((*others, "cli", "scripts", "tests"))}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_shared_is_below_every_service() -> None:
    for path in modules("shared"):
        wrong = {m for m in imports(path) if m.startswith(("services", "cli", "scripts", "tests"))}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_services_holds_the_three_services_only() -> None:
    entries = {p.name for p in (ROOT / "services").iterdir() if not p.name.startswith(("_", "."))}
    assert entries == set(SERVICES)


def test_the_rules_see_the_imports() -> None:
    # The parser finds an import inside a function, where the CLI imports the services.
    assert "services.api.app" in imports(ROOT / "cli" / "services.py")


def test_the_command_loads_a_tools_dependencies_only_when_that_tool_runs() -> None:
    # `convbus api` imports cli.main: the bench's and the overview's HTTP client would cost the
    # API 7 MB of RSS (measured) for nothing.
    probe = "import cli.main, sys; print(sorted(m for m in {MODS} if m in sys.modules))"
    mods = ("aiohttp", "uvloop", "shared.overview", "cli.bench.run", "services.api.app")
    found = subprocess.run(
        [sys.executable, "-c", probe.replace("{MODS}", repr(mods))],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.strip()  # fmt: skip
    assert found == "[]"


def test_the_client_is_a_library_beside_the_services() -> None:
    # convbus/ is what a master's or a user's program imports: the wire's models (shared/),
    # nothing of a service, the operator's tools or the tests.
    for path in modules("convbus"):
        wrong = {m for m in imports(path) if m.startswith(("services", "cli", "scripts", "tests"))}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"
    probe = "import convbus, sys; print(sorted(m for m in {MODS} if m in sys.modules))"
    # (aio-pika comes with the wire's models: they check a pool's name with the topology.)
    mods = ("sqlalchemy", "fastapi", "uvicorn", "services")
    found = subprocess.run(
        [sys.executable, "-c", probe.replace("{MODS}", repr(mods))],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.strip()  # fmt: skip
    assert found == "[]", f"importing the client loads {found}"
