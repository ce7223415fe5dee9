"""Our merges against mergekit's (a maintained peer) on the same tiny models, for the methods both have.

Runs when mergekit is installed (pip install 'posttrain[merge]'). DARE is not compared: mergekit rescales the
survivors to keep the L1 norm (not DARE's 1/(1-p)) and draws its masks from the global RNG.
"""

import pytest
import torch

pytest.importorskip("mergekit", reason="mergekit is not installed: pip install 'posttrain[merge]'")

from posttrain.api import merge  # noqa: E402
from posttrain.models import build_tiny_model  # noqa: E402

VOCAB = 256
WEIGHTS = (0.7, 0.4)
CASES = {  # our config -> mergekit's, the same merge
    "linear": ({"method": "linear"}, {"merge_method": "linear"}),
    "task_arithmetic": ({"method": "task_arithmetic", "parameters": {"scale": 0.8}},
                        {"merge_method": "task_arithmetic", "parameters": {"lambda": 0.8}}),
    "ties": ({"method": "ties", "parameters": {"density": 0.3}},
             {"merge_method": "ties", "density": 0.3}),
    "slerp": ({"method": "slerp", "parameters": {"t": 0.3}}, {"merge_method": "slerp", "parameters": {"t": 0.3}}),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("mergekit_inputs")
    paths = {}
    for name, seed in (("base", None), ("a", 1), ("b", 2)):
        model = build_tiny_model(0, vocab_size=VOCAB)
        if seed is not None:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.02 * torch.randn(p.shape, generator=g))
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def _mergekit(folders, spec, out):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    spec = dict(spec)
    density = spec.pop("density", None)
    models = []
    for name, weight in zip(("a", "b"), WEIGHTS):
        parameters = {"weight": weight} if spec["merge_method"] != "slerp" else {}
        if density is not None:
            parameters["density"] = density
        models.append({"model": folders[name], "parameters": parameters})
    base = folders["a"] if spec["merge_method"] == "slerp" else folders["base"]
    config = dict(spec, models=models, base_model=base, dtype="float32")
    if spec["merge_method"] == "linear":
        config.pop("base_model")
    run_merge(MergeConfiguration.model_validate(config), str(out),
              MergeOptions(copy_tokenizer=False, quiet=True, write_model_card=False))
    return out


def _tensors(folder):
    from posttrain.models.tensor_files import TensorReader

    with TensorReader(folder) as reader:
        return {name: reader.get(name).float() for name in reader.names()}


@pytest.mark.parametrize("method", list(CASES))
def test_matches_mergekit(folders, tmp_path, method):
    ours_config, theirs_spec = CASES[method]
    models = [{"model": folders[n], "weight": w} for n, w in zip(("a", "b"), WEIGHTS)]
    ours = _tensors(merge(dict(ours_config, models=models, base=folders["base"], out=str(tmp_path / "ours"))))
    theirs = _tensors(_mergekit(folders, theirs_spec, tmp_path / "theirs"))
    shared = set(ours) & set(theirs)
    assert shared == set(ours) - {"lm_head.weight"}, "mergekit wrote different tensors"
    difference = max((ours[k] - theirs[k]).abs().max().item() for k in shared)
    print(f"mergekit {method}: max |ours - mergekit| = {difference:.3g}")
    assert difference < 1e-6
