"""What every verifiable task shares: the `Problem` record, the `Task` interface and the train/eval split rule.

A task draws problems from a seeded generator and checks completions with a program. The split is decided by a hash
of each problem's split key (by default its canonical key), never by the generator's seed, so the train and eval
splits are disjoint for every seed and every size, and a problem always lands in the same split:

    split(problem) = "eval" if int(sha256(split_key).hexdigest(), 16) % 10 == 0 else "train"

(about 10% of the problem space is held out). `posttrain.data.synthetic` uses the same rule on the same keys, so the
shipped SFT data never contains a held-out arithmetic question of the `arithmetic` task.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from posttrain.errors import ConfigError

SPLITS = ("train", "eval")
EVAL_BUCKETS = 10  # one bucket in ten is held out

RewardFn = Callable[[list[str], list[str], list["Problem"]], list[float]]


def split_of(key: str) -> str:
    """The split ("train" or "eval") a problem with this split key belongs to, for every seed and size."""
    return "eval" if int(hashlib.sha256(key.encode()).hexdigest(), 16) % EVAL_BUCKETS == 0 else "train"


@dataclass(frozen=True)
class Problem:
    """One verifiable problem.

    prompt: the user message (the trainer applies the chat template).
    answer: the canonical answer text: a number as a string, or JSON of a constraint spec.
    meta: task-specific facts (operands, constraints, word limit, a worked solution); ``meta["key"]`` is the
        problem's canonical identity when it differs from the prompt, ``meta["split_key"]`` what the split hashes
        when it differs from the key.
    """

    prompt: str
    answer: str
    meta: dict = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        """The canonical identity: two problems with the same key are the same problem."""
        return self.meta.get("key", self.prompt)

    @property
    def split_key(self) -> str:
        return self.meta.get("split_key", self.key)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "answer": self.answer, "meta": self.meta}

    @classmethod
    def from_dict(cls, row: dict) -> "Problem":
        return cls(row["prompt"], row["answer"], dict(row.get("meta", {})))


@dataclass
class Task:
    """A verifiable task. Subclasses are dataclasses whose fields are the task's options, and implement `draw`,
    `reward` and `is_correct`."""

    name: ClassVar[str] = ""

    def draw(self, rng: random.Random) -> Problem:
        """One problem from the generator (either split); `problems` filters by split and removes repeats."""
        raise NotImplementedError

    def draw_at(self, rng: random.Random, index: int) -> Problem:
        """The draw for position `index` of a `problems` list: `draw` by default; a task that balances its lists over
        a property (word problems over their number of steps, additions over their digits) cycles it by index."""
        return self.draw(rng)

    def reward(self, problem: Problem, completion: str) -> float:
        """The reward of one completion, in [0, 1]."""
        raise NotImplementedError

    def is_correct(self, problem: Problem, completion: str) -> bool:
        raise NotImplementedError

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """`n` distinct problems of `split`, deterministic given the options and `seed`; a smaller `n` with the same
        seed gives a prefix of a larger one."""
        if split not in SPLITS:
            raise ConfigError(f"task {self.name!r}: split must be one of {SPLITS}, got {split!r}")
        if n < 0:
            raise ConfigError(f"task {self.name!r}: number of problems must be >= 0, got {n}")
        rng = random.Random(seed)
        out: list[Problem] = []
        seen: set[str] = set()
        attempts, max_attempts = 0, 100 * n + 1000
        while len(out) < n:
            attempts += 1
            if attempts > max_attempts:
                raise ConfigError(
                    f"task {self.name!r}: found only {len(out)} distinct {split} problems of the {n} asked for in "
                    f"{max_attempts} draws; the options allow too few problems (ask for fewer, or widen the options)"
                )
            problem = self.draw_at(rng, len(out))
            if problem.key in seen or split_of(problem.split_key) != split:
                continue
            seen.add(problem.key)
            out.append(problem)
        return out

    def accuracy(self, problems: list[Problem], completions: list[str]) -> float:
        """Fraction of completions that `is_correct` accepts."""
        _check_lengths(self.name, len(problems), len(completions))
        if not problems:
            raise ValueError(f"task {self.name!r}: accuracy of zero problems is undefined")
        return sum(self.is_correct(p, c) for p, c in zip(problems, completions)) / len(problems)

    def reward_fn(self) -> RewardFn:
        """This task's checker in the common reward signature ``(prompts, completions, problems) -> rewards``."""

        def task_reward(prompts: list[str], completions: list[str], problems: list[Problem]) -> list[float]:
            _check_lengths(self.name, len(problems), len(completions))
            return [self.reward(p, c) for p, c in zip(problems, completions)]

        task_reward.__name__ = f"{self.name}_reward"
        return task_reward


def _check_lengths(name: str, n_problems: int, n_completions: int) -> None:
    if n_problems != n_completions:
        raise ValueError(f"task {name!r}: {n_problems} problems but {n_completions} completions")


def check_fraction(task: str, option: str, value: float) -> None:
    """Options that are weights or credits must lie in [0, 1]."""
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"task {task!r}: option {option!r} must be a number in [0, 1], got {value!r}")
