"""What a run trusts (docs/security.md): crafted pickles in a model or checkpoint folder and code-executing YAML tags
never run; each is refused with one line or never read."""

import os
import pickle

import pytest

from posttrain.errors import ConfigError, ModelLoadError
from posttrain.models import build_tiny_model, load_model, load_tokenizer


class _Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_weights_file_with_code_is_refused(tmp_path):
    folder, marker = tmp_path / "model", tmp_path / "PWNED"
    build_tiny_model(seed=0).save_pretrained(folder)
    load_tokenizer("tiny").save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": _Payload(marker)}, handle)
    with pytest.raises(ModelLoadError, match="never unpickles code"):
        load_model(str(folder))
    assert not marker.exists()


def test_a_pickle_dropped_into_a_checkpoint_is_never_read(tmp_path, caplog):
    from tests.engine.test_engine import make_engine

    engine = make_engine(tmp_path, max_steps=2, save_steps=2)
    engine.train()
    checkpoint, marker = tmp_path / "run" / "checkpoints" / "step_2", tmp_path / "PWNED"
    for name in ("optimizer.pt", "rng_state.pth", "training_args.bin", "scheduler.pt"):
        with open(checkpoint / name, "wb") as handle:
            pickle.dump(_Payload(marker), handle)
    assert make_engine(tmp_path, max_steps=4, save_steps=2).train()["step"] == 4
    assert f"resumed from {checkpoint} at step 2" in caplog.text
    assert not marker.exists()


def test_yaml_tags_that_build_python_objects_are_refused(tmp_path):
    from posttrain.config import read_config_file

    marker = tmp_path / "PWNED"
    path = tmp_path / "config.yaml"
    path.write_text(f"method: sft\nmodel: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="config.yaml:2: invalid YAML"):
        read_config_file(path)
    assert not marker.exists()
