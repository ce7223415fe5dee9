"""Every module imports, and `import posttrain` stays light. The layers' import rules (``posttrain.math`` imports only
torch, and the rest of DESIGN.md) are import-linter contracts, checked by tests/test_layers.py."""

import importlib
import pkgutil
import subprocess
import sys

import posttrain


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(posttrain.__path__, "posttrain.")]
    assert len(names) > 15
    for name in names:
        importlib.import_module(name)


def test_import_posttrain_is_light():
    code = "import sys, posttrain; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
