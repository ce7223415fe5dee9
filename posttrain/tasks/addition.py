"""Long addition with a scratchpad (Nye et al. 2021, "Show Your Work: Scratchpads for Intermediate Computation with
Language Models"): "What is 4738 + 5894?" answered directly, or column by column with the carries written out:

    Ones: 8 + 4 + 0 = 12, write 2, carry 1, so far 2.
    Tens: 3 + 9 + 1 = 13, write 3, carry 1, so far 32.
    Hundreds: 7 + 8 + 1 = 16, write 6, carry 1, so far 632.
    Thousands: 4 + 5 + 1 = 10, write 0, carry 1, so far 0632.
    Final carry 1, so far 10632.
    The answer is 10632.

Each column line adds the two digits and the carry in, writes the sum's last digit and carries the rest; "so far"
keeps the digits written, so the final answer is a copy, not a reversal. Option `format` picks the prompt's
instruction (and `meta["solution"]`, the SFT completion): `scratchpad` or `direct` ("The answer is 10632." only);
the problems, their split and the reward are the same in both, those of `arithmetic` (`NumericTask`). Operands have
`digits` digits (a list, e.g. [4, 5], taken in turn so lists are balanced over them).

`check_steps(problem, completion)`: ``(correct column lines, column lines written)``; the i-th line is correct when
it holds the i-th digits of both operands, the true carry in, and the right sum, written digit, carry and digits so
far, so a line that adds the wrong digits correctly still counts as wrong.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

from posttrain.errors import ConfigError
from posttrain.tasks.arithmetic import DIRECT_INSTRUCTION, NumericTask, digit_range, question
from posttrain.tasks.base import Problem, check_fraction

PLACES = ["ones", "tens", "hundreds", "thousands", "ten thousands", "hundred thousands", "millions", "ten millions",
          "hundred millions"]
SCRATCHPAD_INSTRUCTION = ("Add column by column from the ones, writing each column's sum and carry, then give the "
                          "final answer as 'The answer is N.'")
FORMATS = ("scratchpad", "direct")
_COLUMN = re.compile(r"(\d) \+ (\d) \+ (\d) = (\d+), write (\d), carry (\d), so far (\d+)")


def columns(a: int, b: int) -> list[tuple[int, int, int, int, str]]:
    """Per column from the ones: ``(digit of a, digit of b, carry in, sum, digits so far)``."""
    x, y = str(a)[::-1], str(b)[::-1]
    out, carry, written = [], 0, ""
    for i in range(max(len(x), len(y))):
        da, db = int(x[i]) if i < len(x) else 0, int(y[i]) if i < len(y) else 0
        total = da + db + carry
        written = str(total % 10) + written
        out.append((da, db, carry, total, written))
        carry = total // 10
    return out


def scratchpad(a: int, b: int) -> str:
    """The worked scratchpad of the module docstring, ending in "The answer is N."."""
    lines = []
    for place, (da, db, carry, total, written) in zip(PLACES, columns(a, b)):
        lines.append(f"{place.capitalize()}: {da} + {db} + {carry} = {total}, write {total % 10}, "
                     f"carry {total // 10}, so far {written}.")
    if a + b >= 10 ** len(lines):  # a carry out of the last column
        lines.append(f"Final carry 1, so far {a + b}.")
    return "\n".join(lines + [f"The answer is {a + b}."])


def check_scratchpad(a: int, b: int, text: str) -> tuple[int, int]:
    """``(correct column lines, column lines written)`` of a scratchpad for ``a + b`` (module docstring)."""
    truth = columns(a, b)
    written = _COLUMN.findall(text)
    correct = 0
    for i, (da, db, carry, total, digit, carry_out, so_far) in enumerate(written):
        if i < len(truth):
            t_da, t_db, t_carry, t_total, t_written = truth[i]
            correct += ((int(da), int(db), int(carry), int(total), int(digit), int(carry_out), so_far)
                        == (t_da, t_db, t_carry, t_total, t_total % 10, t_total // 10, t_written))
    return correct, len(written)


@dataclass
class LongAdditionTask(NumericTask):
    """`a + b` with `digits`-digit operands, answered directly or on a scratchpad (`format`)."""

    name = "long_addition"
    digits: tuple = (4, 5)
    format: Literal["scratchpad", "direct"] = "scratchpad"
    instruction: str | None = None  # None: the format's instruction

    def __post_init__(self) -> None:
        check_fraction(self.name, "partial_credit", self.partial_credit)
        check_fraction(self.name, "format_weight", self.format_weight)
        digits = [self.digits] if isinstance(self.digits, int) else list(self.digits)
        if not digits or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 9 for d in digits):
            raise ConfigError(f"task 'long_addition': digits must be a non-empty list of integers in 1..9, got "
                              f"{self.digits!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"task 'long_addition': format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        self.digits = tuple(digits)
        if self.instruction is None:
            self.instruction = SCRATCHPAD_INSTRUCTION if self.format == "scratchpad" else DIRECT_INSTRUCTION

    def draw_at(self, rng: random.Random, index: int) -> Problem:
        return self._draw(rng, self.digits[index % len(self.digits)])

    def draw(self, rng: random.Random) -> Problem:
        return self._draw(rng, rng.choice(self.digits))

    def _draw(self, rng: random.Random, digits: int) -> Problem:
        low, high = digit_range(digits)
        a, b = rng.randint(low, high), rng.randint(low, high)
        text = question(a, "+", b)
        solution = scratchpad(a, b) if self.format == "scratchpad" else f"The answer is {a + b}."
        meta = {"key": text, "a": a, "b": b, "digits": digits, "solution": solution}
        return Problem(self.prompt(text), str(a + b), meta)

    def check_steps(self, problem: Problem, completion: str) -> tuple[int, int]:
        return check_scratchpad(problem.meta["a"], problem.meta["b"], completion)
