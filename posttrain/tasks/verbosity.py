"""Verbosity: "Why do people enjoy gardening? Answer in at most 20 words."; the reward counts words, not tokens.

A word is a whitespace-separated token with at least one letter or digit (`count_words`): "don't", "e-mail",
"3.5" and "**bold**" are one word each; a lone "-", "*" or "..." is none (so bullet markers and punctuation do not
count). For a limit N and w words:

    reward = 0                           if w == 0 (an empty answer is not an answer)
           = 1                           if 1 <= w <= N
           = exp(-(w - N) / (decay * N))  if w > N   (continuous at N; decay = 0.5: 2N words gives e^-2 = 0.14)

is_correct: 1 <= w <= N. The split hashes the question alone, so a held-out question is never seen in training
with any limit.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from posttrain.errors import ConfigError
from posttrain.tasks.base import Problem, Task

TOPICS = [
    "the ocean", "volcanoes", "coffee", "bicycles", "the moon", "honeybees", "rainforests", "chess", "recycling",
    "sleep", "libraries", "bread baking", "solar power", "penguins", "the internet", "gardening", "music lessons",
    "city parks", "rain", "maps", "trains", "friendship", "mountains", "tea", "deserts", "snow", "museums",
    "vaccines", "bridges", "dinosaurs", "kites", "clocks", "the alphabet", "olive trees", "lighthouses", "owls",
    "public transport", "cooking rice", "running", "photography", "birthdays", "whales", "earthquakes", "soap",
    "mushrooms", "windmills", "homework", "the post office", "umbrellas", "glass", "rivers", "cheese", "fireworks",
    "compasses", "spiders", "picnics", "paper", "rainbows", "telescopes", "elephants",
]
QUESTIONS = ["Why do people care about {topic}?", "Explain {topic} to a child.", "What is interesting about {topic}?",
             "Describe {topic}.", "What should everyone know about {topic}?"]


def words(text: str) -> list[str]:
    """The words of `text`: whitespace-separated tokens with at least one alphanumeric character."""
    return [token for token in text.split() if any(ch.isalnum() for ch in token)]


def count_words(text: str) -> int:
    return len(words(text))


def length_reward(n_words: int, limit: int, decay: float) -> float:
    """The reward rule of the module docstring."""
    if n_words == 0:
        return 0.0
    if n_words <= limit:
        return 1.0
    return math.exp(-(n_words - limit) / (decay * limit))


@dataclass
class VerbosityTask(Task):
    """Limits uniform in [min_limit, max_limit]; `limit` fixes every problem's limit and is the limit used for
    problems of other tasks (so `verbosity` can be added as a length reward to any task)."""

    name = "verbosity"
    min_limit: int = 10
    max_limit: int = 50
    limit: int | None = None
    decay: float = 0.5

    def __post_init__(self) -> None:
        if self.limit is not None:
            self.min_limit = self.max_limit = self.limit
        limits = (self.min_limit, self.max_limit)
        if not (all(isinstance(x, int) for x in limits) and 1 <= self.min_limit <= self.max_limit):
            raise ConfigError(f"task 'verbosity': need integers 1 <= min_limit <= max_limit, got "
                              f"{self.min_limit!r} and {self.max_limit!r}")
        if not isinstance(self.decay, (int, float)) or self.decay <= 0:
            raise ConfigError(f"task 'verbosity': option 'decay' must be a positive number, got {self.decay!r}")

    def draw(self, rng: random.Random) -> Problem:
        text = rng.choice(QUESTIONS).format(topic=rng.choice(TOPICS))
        limit = rng.randint(self.min_limit, self.max_limit)
        meta = {"key": f"{text}|{limit}", "split_key": text, "word_limit": limit}
        return Problem(f"{text} Answer in at most {limit} words.", str(limit), meta)

    def word_limit(self, problem: Problem) -> int:
        limit = problem.meta.get("word_limit", self.limit)
        if limit is None:
            raise ConfigError("task 'verbosity': this problem has no word limit; set the 'limit' option to use "
                              "verbosity as a reward on another task's problems")
        return limit

    def reward(self, problem: Problem, completion: str) -> float:
        return length_reward(count_words(completion), self.word_limit(problem), self.decay)

    def is_correct(self, problem: Problem, completion: str) -> bool:
        return 1 <= count_words(completion) <= self.word_limit(problem)
