"""The layout rules of DESIGN.md section 3: the pure core imports no sockets, no peer, no peft/transformers, and
only transport and security import zmq."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "declora"
PURE_MODULES = ["declora.core.topology", "declora.core.factors", "declora.core.aggregate", "declora.core.codecs", "declora.wire.protocol"]
FORBIDDEN_IN_PURE = ["zmq", "peft", "transformers", "declora.node.peer"]
ZMQ_OWNERS = ("transport", "security")  # declora/wire/transport.py, declora/wire/security.py, or packages of those names
IMPORTS_ZMQ = re.compile(r"^\s*(?:import|from)\s+zmq\b", re.MULTILINE)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_nothing_heavy(module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet")
    # A fresh interpreter: this test process has imported whatever other tests needed.
    probe = (
        f"import json, sys, {module}; "
        f"print(json.dumps([m for m in {FORBIDDEN_IN_PURE!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, f"importing {module} failed:\n{done.stderr}"
    assert json.loads(done.stdout.splitlines()[-1]) == [], f"{module} pulls in forbidden modules"


def _module_parts(path: Path) -> tuple[str, ...]:
    return path.relative_to(PACKAGE).with_suffix("").parts


def test_only_transport_and_security_import_zmq():
    importers = [p for p in sorted(PACKAGE.rglob("*.py")) if IMPORTS_ZMQ.search(p.read_text(encoding="utf-8"))]
    strangers = [str(p.relative_to(PACKAGE.parent)) for p in importers if _module_parts(p)[0] not in ZMQ_OWNERS]
    assert strangers == [], f"only declora.wire.transport and declora.wire.security may import zmq, not {strangers}"


def test_the_zmq_pattern_catches_both_import_forms():
    # Guards the grep above against a pattern that silently matches nothing.
    assert IMPORTS_ZMQ.search("import zmq\n") and IMPORTS_ZMQ.search("    from zmq.auth import x\n")
    assert IMPORTS_ZMQ.search("import zmq.asyncio as azmq\n")
    assert not IMPORTS_ZMQ.search("import zmqlike\n") and not IMPORTS_ZMQ.search("# we never import zmq here\n")
