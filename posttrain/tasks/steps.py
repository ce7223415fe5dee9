"""Step-level checking of a reasoning chain whose steps are equations ("7 * 3 = 21. 21 + 5 = 26. The answer is
26."): each written equation ``a op b = c`` (or ``a op b op c = d``, a scratchpad's column) is checked on its own, so
a chain can be scored by the share of correct steps beside its final answer (the signal a process reward model
learns; Lightman et al. 2023)."""

from __future__ import annotations

import re

_NUM = r"-?\d+(?:\.\d+)?"
_OP = r"[-+*/x×÷]"
# an expression of two or more operands, "=", a result: "7 * 3 = 21", "8 + 4 + 1 = 13" (a scratchpad's column)
_EQUATION = re.compile(rf"({_NUM}(?:\s*{_OP}\s*{_NUM})+)\s*=\s*({_NUM})")
_TERM = re.compile(rf"\s*({_OP})\s*({_NUM})")


def evaluate(expression: str) -> float | None:
    """The value of ``a op b op c ...`` with the usual precedence (* and / before + and -); None on a division by
    zero."""
    first = re.match(_NUM, expression)
    terms = [float(first.group())]  # additive terms; * and / apply to the last one
    for op, number in _TERM.findall(expression[first.end():]):
        value = float(number)
        if op in "+-":
            terms.append(value if op == "+" else -value)
        elif op in "/÷":
            if value == 0:
                return None
            terms[-1] /= value
        else:
            terms[-1] *= value
    return sum(terms)


def check_steps(text: str) -> tuple[int, int]:
    """``(correct equations, equations)`` written in ``text``; a division by zero counts as wrong."""
    correct = total = 0
    for expression, result in _EQUATION.findall(text):
        value = evaluate(expression)
        total += 1
        correct += value is not None and abs(value - float(result)) < 1e-9
    return correct, total
