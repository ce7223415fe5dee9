"""Early stopping and save_best on any evaluation metric: greater_is_better follows the metric's name unless set;
the best model is written to best/ (equal to the checkpoint of its step); an unknown metric is a one-line error."""

import pytest
import torch
from safetensors.torch import load_file

from posttrain.engine import Engine, EngineConfig
from posttrain.errors import ConfigError
from posttrain.models import build_tiny_model, save_model
from posttrain.trainers.sft import SFTMethod
from tests.conftest import random_examples


class ScriptedEvaluation(SFTMethod):
    """SFT's loss, and an evaluation that reads its figures off a script (one record per evaluation)."""

    def __init__(self, script):
        self.script = list(script)

    def evaluate(self, model, step):
        return {"eval_items": 1, **self.script.pop(0)}


def run(tmp_path, script, **overrides):
    model = build_tiny_model(seed=0, vocab_size=256)
    settings = dict(output_dir=str(tmp_path / "run"), max_steps=10, batch_size=4, learning_rate=1e-2,
                    progress_bar=False, eval_on_start=False, eval_steps=2, save_steps=2, save_total_limit=None)
    settings.update(overrides)
    engine = Engine(EngineConfig(**settings), model, ScriptedEvaluation(script), random_examples(16, vocab=256),
                    random_examples(4, seed=1, vocab=256), pad_token_id=0,
                    save_model=lambda d: save_model(model, None, d))
    return engine, engine.train()


def test_greater_is_better_metric_stops_and_keeps_the_best(tmp_path):
    script = [{"eval_accuracy": a, "eval_loss": 1.0} for a in (0.5, 0.7, 0.6, 0.7)]
    engine, state = run(tmp_path, script, metric_for_best_model="accuracy", patience=2, save_best=True)
    assert state["step"] == 8 and state["stopped"].startswith("early stop: eval_accuracy")
    assert state["best_step"] == 4 and state["best_metric"] == 0.7  # a tie (0.7 again at step 8) is no improvement
    best = load_file(tmp_path / "run" / "best" / "model.safetensors")
    at_4 = load_file(tmp_path / "run" / "checkpoints" / "step_4" / "model.safetensors")
    at_8 = load_file(tmp_path / "run" / "checkpoints" / "step_8" / "model.safetensors")
    assert all(torch.equal(best[k], at_4[k]) for k in best)
    assert not all(torch.equal(best[k], at_8[k]) for k in best)


def test_default_follows_eval_loss_lower_is_better(tmp_path):
    script = [{"eval_loss": v} for v in (3.0, 2.0, 2.5, 2.0, 9.0)]
    _, state = run(tmp_path, script, patience=2)
    assert (state["step"], state["best_step"], state["best_metric"]) == (8, 4, 2.0)
    assert state["stopped"] == "early stop: eval_loss did not improve for 2 evaluations"
    assert not (tmp_path / "run" / "best").exists()


@pytest.mark.parametrize("name,greater", [("eval_loss", False), ("mse", False), ("ece", False),
                                          ("accuracy", True), ("eval_macro_f1", True)])
def test_direction_from_the_name(name, greater):
    assert EngineConfig(metric_for_best_model=name).best_metric() == (
        name if name.startswith("eval_") else f"eval_{name}", greater)
    assert EngineConfig(metric_for_best_model=name, greater_is_better=not greater).best_metric()[1] == (not greater)


def test_unknown_metric_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no 'eval_acc'; it has eval_items, eval_accuracy"):
        run(tmp_path, [{"eval_accuracy": 0.5}], metric_for_best_model="acc")
