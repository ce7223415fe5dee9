import json
import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
torch.set_num_threads(1)  # tiny models gain nothing from intra-op threads; CI has 2 cores


@pytest.fixture(scope="session")
def tokenizer():
    from posttrain.models import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture
def tiny_model():
    from posttrain.models import build_tiny_model

    return build_tiny_model(seed=0)


@pytest.fixture
def write_jsonl(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return write


def random_examples(n, seed=0, vocab=200, min_len=5, max_len=20, prompt_len=3):
    """Token-level examples for engine tests: random ids, the first ``prompt_len`` tokens carry no loss."""
    from posttrain.data import Example

    g = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        examples.append(Example(ids, [0] * prompt_len + [1] * (length - prompt_len), f"row{i}"))
    return examples
