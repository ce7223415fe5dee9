"""Self-consistency (Wang et al. 2023): sample k reasoning chains, parse each one's final answer, and answer with the
most frequent one. Chains whose answer cannot be parsed do not vote; a tie goes to the answer reached first (the
earliest sample), so the vote is a pure function of the samples in order."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Hashable

from posttrain.tasks.arithmetic import extract_answer


def majority_vote(answers: list[Hashable | None]) -> tuple[Hashable | None, int]:
    """``(the most frequent non-None answer, its votes)``; ``(None, 0)`` when no answer parsed."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0
    top = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == top)
    return winner, top


def self_consistent_answer(texts: list[str], parse: Callable[[str], Hashable | None] = extract_answer):
    """The voted answer of k sampled completions and its votes (numeric answers: ``extract_answer``)."""
    return majority_vote([parse(text) for text in texts])
