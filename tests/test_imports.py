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


def test_every_name_the_benchmarks_import_from_posttrain_exists():
    """Benchmarks import posttrain inside their functions and CI does not run them: a renamed function would only
    show when someone re-runs a comparison. Check each ``from posttrain... import name`` resolves."""
    import ast
    import importlib
    from pathlib import Path

    missing = []
    for path in sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("posttrain"):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and not _is_submodule(node.module, a.name)]
    assert not missing, missing


def _is_submodule(package: str, name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except ModuleNotFoundError:  # ``package`` is a module, not a package
        return False
