import pytest
import torch

from posttrain.models import build_tiny_model


@pytest.fixture(scope="package")
def sharp_model():
    """A tiny model with its projections scaled up x10: the plain random one greedily repeats a newline whatever it
    reads; this one's reasoning differs between prompts and orders, and two templates give visibly different
    verdicts. Shared read-only (eval mode, never trained)."""
    model = build_tiny_model(seed=3).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "proj" in name:
                parameter.mul_(10)
    return model
