"""Load the micro scripts by path: they are standalone files, not a package."""

import importlib.util
import pathlib
import sys

MICRO = pathlib.Path(__file__).resolve().parents[2] / "micro"
SCRIPTS = sorted(p.stem for p in MICRO.glob("micro*.py"))
_cache = {}


def load_micro(name):
    """Import micro/<name>.py as a module (once); its `if __name__ == "__main__"` block does not run."""
    if name not in _cache:
        spec = importlib.util.spec_from_file_location(f"micro_{name}", MICRO / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _cache[name] = module
    return _cache[name]


