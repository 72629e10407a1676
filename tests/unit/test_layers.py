"""Imports point down only: each package may import from lower layers (and from
itself), never from a higher one. Read from the source with ``ast``, so a new
upward import fails here before it tangles the tree."""

from __future__ import annotations

import ast
from pathlib import Path

import xvmcni

SRC = Path(xvmcni.__file__).parent

# Lowest first. A module's layer is that of its longest matching prefix.
LAYERS: list[tuple[str, ...]] = [
    ("xvmcni.errors",),
    ("xvmcni.cni", "xvmcni.config", "xvmcni.logsetup"),
    ("xvmcni.dataplane", "xvmcni.state"),
    ("xvmcni.ipam", "xvmcni.controlplane", "xvmcni.runtime"),
    ("xvmcni.models",),
    ("xvmcni.networks",),
    ("xvmcni.commands",),
    ("xvmcni.agent",),
    ("xvmcni.lab", "xvmcni.cli", "xvmcni.diagnose", "xvmcni.plugin_file", "xvmcni.cmd"),
]

# Deliberate exceptions, each with its reason (none today: the entry points live in
# cmd/, at the top, and import the command flow lazily, downward).
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    return best


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports_of(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = module.split(".")[: -node.level or None]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("xvmcni"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("xvmcni"))
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in modules() if m != "xvmcni" and layer_of(m) < 0)
    assert not unplaced, f"add these to LAYERS: {unplaced}"


def test_imports_point_down() -> None:
    known = modules()
    upward = []
    for module, path in sorted(known.items()):
        mine = layer_of(module)
        for target in imports_of(module, path):
            if target not in known or target == "xvmcni":
                continue  # a name imported from a module, not a module itself
            if package_of(target) == package_of(module):
                continue
            if layer_of(target) > mine and (module, target) not in ALLOWED_UPWARD:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    # Guard against a checker that can never fail.
    assert layer_of("xvmcni.dataplane.veth") < layer_of("xvmcni.commands")
    fake = tmp_path / "veth.py"
    fake.write_text("from xvmcni.commands import run\n")
    assert "xvmcni.commands" in imports_of("xvmcni.dataplane.veth", fake)
