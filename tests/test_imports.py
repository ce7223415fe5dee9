"""Every module imports, and the layers keep their dependency rules (DESIGN.md)."""

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


def test_math_imports_only_torch():
    code = (
        "import sys; import posttrain.math; "
        "bad = [m for m in ('transformers', 'peft', 'datasets', 'numpy.random', 'yaml', 'safetensors') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_posttrain_is_light():
    code = "import sys, posttrain; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
