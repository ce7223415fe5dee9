"""Draft tokens for speculative decoding, by prompt lookup: guess that a row continues the way it did before.

With few rows left, a decode step of a small model on a CPU costs about the same for one token per row as for several
(the step is bound by reading the weights, not by arithmetic). So the sampler can feed each row its next token plus a
few *guessed* tokens, and keep the guesses the model would have produced anyway (``posttrain.rollout.sampling``:
verification is exact, the tokens are those of plain decoding).

The guess is prompt lookup (Saxena 2023, https://github.com/apoorvumang/prompt-lookup-decoding; transformers'
``prompt_lookup_num_tokens``): find the latest earlier occurrence of the row's last ``n`` tokens (``n = max_ngram``
down to ``min_ngram``) in its prompt and completion so far, and propose the tokens that followed it. It hits on text
that repeats the prompt or itself ("47 - 18 = 29. The answer is 29."), and rarely on free text.
"""

from __future__ import annotations


class PromptLookupDrafter:
    """Per-row n-gram index over prompt + completion, updated as tokens arrive (O(max_ngram) per token).

    ``min_ngram = 2`` by default: a single matching token predicts the next few poorly in free text, and a rejected
    draft still costs its place in the forward.

    ``index[ngram] = end``: the latest occurrence of ``ngram`` that has a continuation ends at ``end``, so
    ``history[end:]`` is what followed it.
    """

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.history: dict[int, list[int]] = {}
        self.index: dict[int, dict[tuple[int, ...], int]] = {}

    def start(self, row: int, prompt: list[int]) -> None:
        self.history[row], self.index[row] = [], {}
        self.extend(row, prompt)

    def extend(self, row: int, tokens: list[int]) -> None:
        history, index = self.history[row], self.index[row]
        for token in tokens:
            end = len(history)  # the n-grams ending here now have a continuation: ``token``
            for n in range(1, min(self.max_ngram, end) + 1):
                index[tuple(history[end - n : end])] = end
            history.append(token)

    def propose(self, row: int, count: int) -> list[int]:
        """Up to ``count`` tokens that followed the latest earlier occurrence of the row's longest matching suffix."""
        if count <= 0:
            return []
        history, index = self.history[row], self.index[row]
        for n in range(min(self.max_ngram, len(history)), self.min_ngram - 1, -1):
            end = index.get(tuple(history[len(history) - n :]))
            if end is not None:
                return history[end : end + count]
        return []
