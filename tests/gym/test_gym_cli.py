"""The gym command's shell: --help, the missing-extra message (runs without gymnasium), option handling."""

import re
import subprocess
import sys

from posttrain.cli import main


def test_gym_help_lists_algorithms_and_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "posttrain.cli", "gym", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    for algorithm in ("random", "q-learning", "dqn", "reinforce", "ppo", "grpo"):
        assert algorithm in result.stdout
    options = " ".join(result.stdout.split("options:")[1].split())
    for option in ("--seed", "--episodes", "--render", "--quick", "--output-dir"):
        described = re.search(re.escape(option) + r"(?: [A-Z][A-Za-z_.]*)? ([a-z][^-]*)", options)
        assert described and len(described.group(1).split()) >= 3, f"{option} has no help text"


def test_missing_gymnasium_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # `import gymnasium` now raises ImportError
    out = tmp_path / "run"
    assert main(["gym", "random", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'posttrain[gym]'" in err and "gymnasium" in err
    assert not out.exists()  # it failed before doing any work
