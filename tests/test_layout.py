"""The layout is the architecture: lower layers never import the ones built on them.

host/ (programs, processes, ports) knows nothing of guests; guest/ (SSH, keys, seed) nothing of
providers; mechanisms/ and agent/ are handed what they need by the providers, so they never
reach into a provider (docs/architecture.md). Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vmkit"
UPPER = (
    "vmkit.providers",
    "vmkit.vm",
    "vmkit.cli",
    "vmkit.labs",
    "vmkit.docker",
    "vmkit.boxes",
    "vmkit.bundles",
)
FORBIDDEN = {
    "host": (*UPPER, "vmkit.guest", "vmkit.mechanisms", "vmkit.agent", "vmkit.state"),
    "guest": (*UPPER, "vmkit.mechanisms", "vmkit.agent"),
    "mechanisms": UPPER,
    "agent": UPPER,
    # Bundles are made of boxes and images, never the reverse.
    "boxes": ("vmkit.bundles", "vmkit.cli", "vmkit.labs"),
    "docker": ("vmkit.bundles", "vmkit.cli", "vmkit.labs"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, ``from vmkit import x`` counted as ``vmkit.x``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_does_not_import_the_ones_above_it(layer: str) -> None:
    modules = sorted((PACKAGE / layer).glob("*.py"))
    assert modules, f"vmkit/{layer}/ has no modules"
    wrong = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in modules
        for name in sorted(imported_modules(path))
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer])
    ]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from vmkit import vm\n    import vmkit.providers.qemu\n")
    assert {"vmkit.vm", "vmkit.providers.qemu"} <= imported_modules(module)
