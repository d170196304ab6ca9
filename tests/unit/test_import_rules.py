"""The layout rules (README "Layout", DESIGN.md section 3) as folder rules, read from every module's imports
(lazy imports inside functions included):

- core/   imports only core/; never zmq, msgpack, peft or transformers;
- wire/   imports core/ and wire/; the only folder that imports zmq; never peft or transformers;
- learn/  imports core/ and learn/; the only folder that imports peft or transformers; never zmq or msgpack;
- config/ imports core/, wire/ and learn/ (the choices it offers belong to those modules);
- node/   imports everything but the top-level commands (launch, cli);
- launch, cli: anything.
No import cycles anywhere in the package.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "declora"
LAYERS = ("core", "wire", "learn", "node")
MAY_IMPORT = {
    "core": {"core"},
    "wire": {"core", "wire"},
    "learn": {"core", "learn"},
    "config": {"core", "wire", "learn", "config"},
    "node": {"core", "wire", "learn", "config", "node"},
}
THIRD_PARTY_OWNERS = {"zmq": {"wire"}, "peft": {"learn"}, "transformers": {"learn"}, "msgpack": {"wire"}}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in LAYERS:
        return parts[1]
    return parts[1] if len(parts) > 1 else "package"


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the folder rules read absolute ones"
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = modules()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) in MAY_IMPORT))
def test_folder_rules(module):
    layer = layer_of(module)
    imported = imports_of(MODULES[module])
    own = {layer_of(m) for m in imported if m in MODULES and m != "declora"}
    assert own <= MAY_IMPORT[layer], f"{module} ({layer}/) imports {sorted(own - MAY_IMPORT[layer])}/"
    for lib, owners in THIRD_PARTY_OWNERS.items():
        uses = any(m == lib or m.startswith(lib + ".") for m in imported)
        assert not uses or layer in owners, f"{module} imports {lib}; only {sorted(owners)}/ may"


def test_no_import_cycles():
    graph = {m: {t for t in imports_of(p) if t in MODULES and t != m and not m.startswith(t + ".")}
             for m, p in MODULES.items()}
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for t in sorted(graph[m]):
            visit(t)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_rules_see_lazy_and_aliased_imports(tmp_path):
    # Guards the reader above against a form it would silently miss.
    f = tmp_path / "m.py"
    f.write_text("import zmq.asyncio as z\ndef f():\n    from peft import LoraConfig\n")
    assert {"zmq.asyncio", "peft", "peft.LoraConfig"} <= imports_of(f)


@pytest.mark.parametrize("layer,forbidden", [("core", ["zmq", "peft", "transformers", "msgpack"]),
                                             ("wire", ["peft", "transformers"]), ("learn", ["zmq"])])
def test_importing_a_layer_loads_nothing_it_must_not(layer, forbidden):
    # A fresh interpreter: what a module really pulls in, including through third-party packages.
    names = sorted(m for m in MODULES if layer_of(m) == layer)
    probe = (f"import json, sys\nfor m in {names!r}: __import__(m)\n"
             f"print(json.dumps([m for m in {forbidden!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [], f"{layer}/ pulls in forbidden modules"
