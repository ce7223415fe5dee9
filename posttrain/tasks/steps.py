"""Step-level checking of a reasoning chain whose steps are equations ("7 * 3 = 21. 21 + 5 = 26. The answer is
26."): each written equation ``a op b = c`` is checked on its own, so a chain can be scored by the share of correct
steps beside its final answer (the signal a process reward model learns; Lightman et al. 2023)."""

from __future__ import annotations

import re

_EQUATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/x×÷])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "x": lambda a, b: a * b,
          "×": lambda a, b: a * b, "/": lambda a, b: a / b if b else None, "÷": lambda a, b: a / b if b else None}


def check_steps(text: str) -> tuple[int, int]:
    """``(correct equations, equations)`` written in ``text``; a division by zero counts as wrong."""
    correct = total = 0
    for a, op, b, result in _EQUATION.findall(text):
        value = _APPLY[op](float(a), float(b))
        total += 1
        correct += value is not None and abs(value - float(result)) < 1e-9
    return correct, total
