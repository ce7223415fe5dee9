"""Several completions of one prompt in one forward pass: the prompt once, each completion a branch under a 4D mask.

Preference pairs (chosen and rejected of one prompt) and RL groups (G samples of one prompt) score many completions of
the same prompt. Padded rows run the prompt once per completion; here it runs once per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Longest segment ``with_shared_prompts`` builds (unless a padded row is longer): up to ~1k positions, the attention
# over a segment costs little next to the linear layers of a 135M model, while its prompt runs once.
MAX_SEGMENT = 1024


def segment_length(prompt: list[int], branches: list[tuple[list[int], int]]) -> int:
    """Positions of one ``pack_shared_prompts`` segment: p[:-1], then p[-1] once more before each completion."""
    head = min(len(prompt), 1)
    return len(prompt) - head + sum(head + len(completion) for completion, _ in branches)


def pack_shared_prompts(segments: list[tuple[list[int], list[tuple[list[int], int]]]], pad_token_id: int,
                        num_sequences: int) -> dict[str, torch.Tensor]:
    """Prompts with several completions each -> a few rows in which every prompt goes through the model once.

    ``segments``: ``(prompt_ids, [(completion_ids, sequence_index), ...])``. A prompt p (P tokens) with k completions
    c_1..c_k is one segment of P - 1 + k + |c_1| + ... + |c_k| positions::

        p[:-1] | p[-1] c_1 | p[-1] c_2 | ... | p[-1] c_k        (shared prefix | one branch per completion)

    Each branch starts with the prompt's last token, whose hidden state predicts the completion's first token, and
    attends to the shared prefix and to itself, never to another branch (``attention_mask_4d``, ``(R, 1, T, T)``
    boolean, True = may attend); ``position_ids`` continue the prefix in every branch. So every token sees exactly
    the tokens and positions it would see in its own padded row, and the log-probs equal a padded batch's, while the
    prompt costs P + k - 1 positions instead of k P (and no padding between the completions). Segments go into rows
    first-fit by decreasing length; a row is as wide as the longest segment, so attention (quadratic in the row)
    stays cheap as long as segments are short: a preference pair is a segment with two branches
    (``collate_pairs_packed``); a GRPO group of G long completions is split into several segments
    (``with_shared_prompts``).

    Returns ``input_ids``, ``attention_mask`` (2D, real tokens: the engine counts them), ``loss_mask`` (the
    completions), ``position_ids``, ``attention_mask_4d``, ``sequence_index`` (each token's sequence),
    ``completion_position`` (a completion token's index within its completion) and ``num_sequences``. A padding
    position attends only to itself and is never a target; a sequence's first token is never a target.
    """
    rows, width = first_fit_rows([segment_length(*segment) for segment in segments])
    layout = _Layout.empty(len(rows), width, pad_token_id, len(segments))
    for r, row in enumerate(rows):
        start = 0
        for k in row:
            start = layout.write_segment(r, start, k, *segments[k])
        layout.position_ids[r, start:] = torch.arange(width - start)
    return layout.batch(num_sequences)


def first_fit_rows(lengths: list[int]) -> tuple[list[list[int]], int]:
    """Segments (by their ``lengths``) into rows, first-fit by decreasing length: ``(rows, width)``, each row the
    indices of its segments, every row as wide as the longest segment."""
    order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
    width = lengths[order[0]]
    rows: list[list[int]] = []
    room: list[int] = []
    for k in order:
        fit = next((r for r, free in enumerate(room) if lengths[k] <= free), None)
        if fit is None:
            rows.append([])
            room.append(width)
            fit = len(rows) - 1
        rows[fit].append(k)
        room[fit] -= lengths[k]
    return rows, width


@dataclass
class _Layout:
    """The tensors of ``pack_shared_prompts``, ``(R, T)``, filled segment by segment."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    sequence_index: torch.Tensor
    completion_position: torch.Tensor
    segment_id: torch.Tensor  # who may attend to whom: the same segment only (a padding position is its own segment)
    branch: torch.Tensor  # 0 on a prefix, b on the b-th branch: a branch token sees the prefix and its own branch

    @classmethod
    def empty(cls, num_rows: int, width: int, pad_token_id: int, num_segments: int) -> "_Layout":
        shape = (num_rows, width)
        return cls(input_ids=torch.full(shape, pad_token_id, dtype=torch.long),
                   attention_mask=torch.zeros(shape, dtype=torch.long),
                   loss_mask=torch.zeros(shape, dtype=torch.long),
                   position_ids=torch.zeros(shape, dtype=torch.long),
                   sequence_index=torch.zeros(shape, dtype=torch.long),
                   completion_position=torch.zeros(shape, dtype=torch.long),
                   segment_id=torch.arange(width).repeat(num_rows, 1) + num_segments,
                   branch=torch.zeros(shape, dtype=torch.long))

    def write_segment(self, r: int, start: int, k: int, prompt: list[int],
                      branches: list[tuple[list[int], int]]) -> int:
        """Segment ``k`` (``prompt``, its ``branches``) into row ``r`` from column ``start``; returns its end."""
        prefix = prompt[:-1]
        head = prompt[-1:]  # empty for an empty prompt: then a completion's first token is no target
        end = start + len(prefix)
        self.input_ids[r, start:end] = torch.tensor(prefix, dtype=torch.long)
        self.position_ids[r, start:end] = torch.arange(len(prefix))
        self.sequence_index[r, start:end] = branches[0][1]
        for which, (completion, index) in enumerate(branches, start=1):
            tokens = head + completion
            lo, hi = end, end + len(tokens)
            self.input_ids[r, lo:hi] = torch.tensor(tokens, dtype=torch.long)
            self.position_ids[r, lo:hi] = torch.arange(len(prefix), len(prefix) + len(tokens))
            # without a prompt, a completion's first token has no predictor
            self.loss_mask[r, hi - len(completion) + (0 if head else 1) : hi] = 1
            self.completion_position[r, hi - len(completion) : hi] = torch.arange(len(completion))
            self.sequence_index[r, lo:hi] = index
            self.branch[r, lo:hi] = which
            end = hi
        self.segment_id[r, start:end] = k
        self.attention_mask[r, start:end] = 1
        return end

    def batch(self, num_sequences: int) -> dict[str, torch.Tensor]:
        """The packed batch, with its 4D mask: same segment, not later, and a branch sees the prefix and itself."""
        width = self.input_ids.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same_segment = self.segment_id[:, :, None] == self.segment_id[:, None, :]
        visible_branch = (self.branch[:, None, :] == 0) | (self.branch[:, None, :] == self.branch[:, :, None])
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "loss_mask": self.loss_mask,
                "position_ids": self.position_ids, "sequence_index": self.sequence_index,
                "completion_position": self.completion_position,
                "attention_mask_4d": (same_segment & visible_branch & causal)[:, None],
                "num_sequences": torch.tensor(num_sequences)}


def with_shared_prompts(batch: dict[str, torch.Tensor], prompt_index: torch.Tensor,
                        prompt_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """A padded batch of (prompt, completion) rows, plus the same rows laid out by ``pack_shared_prompts``: rows with
    the same ``prompt_index`` (an RL group) share their prompt. The padded tensors stay the batch's layout (what
    the loss reads); the model runs on the ``packed_*`` keys, and ``unpack_index`` puts each packed target back
    where it sits in the padded ``(N, T-1)`` targets (``posttrain.models.forward.token_logps`` does both). Only the
    padded batch's targets (``loss_mask``) are targets in the packed layout.

    The padded rows must be prompt + completion from column 0 (``collate_sequences``), ``prompt_lengths`` tokens of
    prompt each; rows of one prompt index must have the same prompt (checked)."""
    input_ids, loss_mask, attention_mask = batch["input_ids"], batch["loss_mask"], batch["attention_mask"]
    lengths, starts = attention_mask.sum(-1).tolist(), prompt_lengths.tolist()
    input_ids = input_ids.cpu()
    groups: dict[int, tuple[list[int], list]] = {}
    for row, key in enumerate(prompt_index.tolist()):
        prompt = input_ids[row, : starts[row]].tolist()
        completion = input_ids[row, starts[row] : lengths[row]].tolist()
        if key in groups and groups[key][0] != prompt:
            raise ValueError(f"rows with prompt index {key} have different prompts")
        groups.setdefault(key, (prompt, []))[1].append((completion, row))
    # Attention grows with the square of a segment, the prompt saved only linearly: a group whose completions are
    # long goes into several segments of at most this many positions (one completion each, at worst: a padded row).
    budget = max(MAX_SEGMENT, input_ids.shape[1])
    segments = []
    for prompt, branches in groups.values():
        segments.append((prompt, []))
        for branch in branches:
            if segments[-1][1] and segment_length(prompt, segments[-1][1] + [branch]) > budget:
                segments.append((prompt, []))
            segments[-1][1].append(branch)
    packed = pack_shared_prompts(segments, 0, len(lengths))  # padding ids are never read
    targets = packed["loss_mask"][:, 1:].bool()
    rows = packed["sequence_index"][:, 1:][targets]
    # completion token j of row s is the padded target at column start_s - 1 + j
    columns = torch.tensor(starts, dtype=torch.long)[rows] - 1 + packed["completion_position"][:, 1:][targets]
    index = rows * (input_ids.shape[1] - 1) + columns
    keep = loss_mask[:, 1:].bool().reshape(-1).cpu()[index]  # e.g. truncated completions masked out of the loss
    targets[targets.clone()] = keep
    packed_loss_mask = torch.zeros_like(packed["loss_mask"])
    packed_loss_mask[:, 1:] = targets.long()
    added = {"packed_input_ids": packed["input_ids"], "packed_position_ids": packed["position_ids"],
             "packed_attention_mask_4d": packed["attention_mask_4d"], "packed_loss_mask": packed_loss_mask,
             "unpack_index": index[keep]}
    return {**batch, **{k: v.to(batch["input_ids"].device) for k, v in added.items()}}
