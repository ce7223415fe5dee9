import torch

from posttrain.data import Example, collate, pack_examples, split_micro_batches, step_batches
from posttrain.models.forward import hidden_states


def test_step_batches_cover_every_example_once_and_are_deterministic():
    lengths = [5, 50, 7, 30, 12, 9, 40, 3, 22, 15, 8]
    a = step_batches(lengths, 4, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(len(lengths)))
    assert a == step_batches(lengths, 4, seed=1, epoch=0)
    assert a != step_batches(lengths, 4, seed=1, epoch=1)


def test_bucketing_cuts_padding():
    lengths = [(i * 37) % 100 + 1 for i in range(256)]
    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    bucketed = step_batches(lengths, 8, seed=0, epoch=0)
    unbucketed = step_batches(lengths, 8, seed=0, epoch=0, bucket_window=1)
    assert padding(bucketed) < 0.25 * padding(unbucketed)


def test_micro_batches_partition_the_step_batch():
    lengths = list(range(10, 18))
    micro = split_micro_batches(list(range(8)), lengths, 4)
    assert len(micro) == 4 and sorted(i for m in micro for i in m) == list(range(8))


def test_packed_rows_match_separate_examples(tiny_model):
    """Packing must not leak attention across examples: hidden states of each packed example equal those of the
    example run alone."""
    examples = [Example(list(range(10, 10 + n)), [0, 0] + [1] * (n - 2), str(n)) for n in (7, 5, 9, 3)]
    packed = pack_examples(examples, max_length=16)
    assert len(packed) == 2 and sorted(len(p) for p in packed) == [8, 16]
    batch = collate(packed, pad_token_id=2)
    assert "position_ids" in batch
    packed_hidden = hidden_states(tiny_model, batch)
    for row, pack in enumerate(packed):
        offset = 0
        for where in pack.where.split("+"):
            example = next(e for e in examples if e.where == where)
            alone = hidden_states(tiny_model, collate([example], pad_token_id=2))[0]
            torch.testing.assert_close(packed_hidden[row, offset : offset + len(example)], alone, atol=1e-5, rtol=1e-4)
            assert batch["loss_mask"][row, offset] == 0  # no loss on predicting an example from the previous one
            offset += len(example)


def test_collate_pads_right_and_masks():
    batch = collate([Example([5, 6, 7], [0, 1, 1]), Example([8], [1])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
