"""The layers of DESIGN.md hold: every import-linter contract in pyproject.toml ([tool.importlinter]) is kept.

Imports inside functions count too. Among the contracts: ``posttrain.math`` imports only torch (no other posttrain
module, no transformers, peft, datasets, safetensors, accelerate, numpy or yaml), data/models/tasks import no layer
above them, the engine knows no method.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    # `lint-imports` (the console script beside sys.executable) as code, so it runs wherever the package is installed
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    result = subprocess.run([sys.executable, "-c", code, "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True,
                            text=True)
    report = result.stdout + result.stderr
    assert result.returncode == 0, "import-linter found an import across the layers:\n" + report
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", report), report  # the contracts were read and run
