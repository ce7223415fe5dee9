"""What makes the micro scripts a teaching tier: standalone, standard library only, one identical autograd."""

import ast
import sys

import pytest

from micro_loader import MICRO, SCRIPTS, load_micro

START, END = "# --- autograd (identical in every micro script) ---", "# --- end autograd ---"
EXPECTED = {"microlora", "microdpo", "microppo", "micromoe", "microreinforce", "microgrpo", "microregularization",
            "microbatchnorm", "microschedule", "microdistill"}


def autograd_block(name):
    text = (MICRO / f"{name}.py").read_text()
    assert text.count(START) == 1 and text.count(END) == 1, name
    return text[text.index(START): text.index(END) + len(END)]


def test_every_script_from_the_issue_exists():
    assert EXPECTED <= set(SCRIPTS)


def test_autograd_block_is_identical_in_every_script():
    reference = autograd_block("microlora")
    assert "class Value" in reference and "def softmax" in reference
    for name in SCRIPTS:
        assert autograd_block(name) == reference, f"{name}.py's autograd block differs from microlora.py's"


@pytest.mark.parametrize("path", sorted(MICRO.glob("*.py")), ids=lambda p: p.name)
def test_imports_only_the_standard_library(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import (the scripts stand alone)"
            imported.add(node.module.split(".")[0])
    assert imported, path.name
    assert imported <= set(sys.stdlib_module_names), f"{path.name} imports {imported - set(sys.stdlib_module_names)}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_is_documented_and_guarded(name):
    text = (MICRO / f"{name}.py").read_text()
    module = load_micro(name)  # importing runs nothing heavy: the work sits behind the __main__ guard
    assert module.__doc__ and "Run:" in module.__doc__ and "http" in module.__doc__
    assert callable(module.main) and 'if __name__ == "__main__":' in text


def test_names_corpus_is_what_its_generator_writes():
    make_names = load_micro("make_names")
    lines = (MICRO / "names.txt").read_text().splitlines()
    assert lines == make_names.make_names()
    assert len(lines) == 1200 and len(set(lines)) == 1200
    assert all(name.isalpha() and name.islower() and 3 <= len(name) <= 12 for name in lines)
