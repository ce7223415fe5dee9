import json

from posttrain.api import train
from posttrain.cli import main
from posttrain.data.synthetic import arithmetic_sft


def _config(tmp_path, train_path, eval_path, **overrides):
    config = {
        "method": "sft", "model": "tiny", "output_dir": str(tmp_path / "run"), "max_steps": 40,
        "batch_size": 8, "learning_rate": 3e-3, "lr_schedule": "constant", "logging_steps": 10,
        "eval_steps": 20, "progress_bar": False,
        "data": {"path": str(train_path), "eval_path": str(eval_path), "max_length": 96},
    }
    config.update(overrides)
    return config


def test_sft_lowers_held_out_loss(tmp_path, write_jsonl):
    train_rows, eval_rows = arithmetic_sft(n_train=200, n_eval=32, seed=1)
    config = _config(tmp_path, write_jsonl("train.jsonl", train_rows), write_jsonl("eval.jsonl", eval_rows))
    evaluation = train(config)
    assert evaluation["metrics"]["perplexity"]["value"] < 0.25 * evaluation["baseline"]["perplexity"]
    assert evaluation["metrics"]["token_accuracy"]["value"] > evaluation["baseline"]["token_accuracy"] + 0.2


def test_sft_memorises_a_small_set_and_generate_replays_it(tmp_path, write_jsonl, capsys):
    rows = [{"prompt": f"Code word {i}?", "completion": f"The code word is {w}."}
            for i, w in enumerate(["amber", "basalt", "cobalt", "dune"])]
    path = write_jsonl("tiny.jsonl", rows)
    evaluation = train(_config(tmp_path, path, path, batch_size=4, max_steps=60, eval_steps=None))
    assert evaluation["metrics"]["token_accuracy"]["value"] == 1.0  # every completion token is the model's argmax
    assert evaluation["metrics"]["eval_loss"]["value"] < 0.3  # from ln(49152) ~= 10.8 at step 0
    # `posttrain generate` applies the same chat template as training, so the memorised reply comes back
    assert main(["generate", "--model", str(tmp_path / "run" / "final"), "--prompt", "Code word 2?",
                 "--max-new-tokens", "12"]) == 0
    assert "The code word is cobalt." in capsys.readouterr().out


def test_sft_lora_trains_only_adapters_and_learns(tmp_path, write_jsonl):
    train_rows, eval_rows = arithmetic_sft(n_train=200, n_eval=32, seed=2)
    config = _config(tmp_path, write_jsonl("train.jsonl", train_rows), write_jsonl("eval.jsonl", eval_rows),
                     max_steps=40, learning_rate=3e-3, lora={"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0})
    evaluation = train(config)
    assert evaluation["trainable_parameters"] < 0.1 * evaluation["total_parameters"]
    # adapters on a random 2-layer model: completion-token accuracy moves a lot (3% -> ~49%) before perplexity does
    assert evaluation["metrics"]["token_accuracy"]["value"] > evaluation["baseline"]["token_accuracy"] + 0.3
    assert evaluation["metrics"]["perplexity"]["value"] < 0.8 * evaluation["baseline"]["perplexity"]
    assert json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())["r"] == 8


def test_packing_trains_too(tmp_path, write_jsonl):
    train_rows, eval_rows = arithmetic_sft(n_train=200, n_eval=32, seed=3)
    config = _config(tmp_path, write_jsonl("train.jsonl", train_rows), write_jsonl("eval.jsonl", eval_rows),
                     max_steps=20, batch_size=2, data={"path": str(tmp_path / "train.jsonl"),
                     "eval_path": str(tmp_path / "eval.jsonl"), "max_length": 256, "packing": True})
    evaluation = train(config)
    assert evaluation["metrics"]["perplexity"]["value"] < 0.5 * evaluation["baseline"]["perplexity"]
