"""``posttrain plot``: one non-empty PNG per kind of quantity the log has."""

import json
import sys

import pytest

from posttrain.cli import main
from posttrain.errors import MissingExtraError
from posttrain.eval.plot import group_of, moving_average, plot_run


def write_log(run, records):
    run.mkdir(parents=True, exist_ok=True)
    (run / "log_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_writes_non_empty_pngs_for_the_columns_the_log_has(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    records = [{"step": s, "loss": 2.0 / s, "lr": 1e-5, "grad_norm": 1.0, "reward": s / 40, "kl": 0.01 * s,
                "tokens_per_s": 100.0} for s in range(1, 41)]
    records += [{"step": s, "eval_accuracy": s / 100, "eval_reward": s / 50, "eval_items": 20} for s in (0, 20, 40)]
    write_log(tmp_path / "run", records)
    assert main(["plot", str(tmp_path / "run")]) == 0
    written = sorted(p.name for p in (tmp_path / "run" / "plots").iterdir())
    assert written == ["accuracy.png", "grad_norm.png", "kl.png", "learning_rate.png", "loss.png", "reward.png"]
    for name in written:
        data = (tmp_path / "run" / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    assert capsys.readouterr().out.count(".png") == 6


def test_columns_are_grouped_by_the_words_in_their_names():
    assert group_of("eval_rewards/accuracy") == "accuracy"
    assert group_of("rewards/margin") == "reward"
    assert group_of("kl_sequence") == "kl"
    assert group_of("eval_completion_length") == "length"
    assert group_of("mean_return_100") == "reward"
    for column in ("tokens_per_s", "generation_s", "reward/arithmetic_std", "eval_items", "logps/chosen"):
        assert group_of(column) is None, column


def test_moving_average_starts_unbiased():
    assert moving_average([5.0, 5.0, 5.0]) == pytest.approx([5.0, 5.0, 5.0])


def test_plot_errors(tmp_path, monkeypatch, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no log_history.jsonl" in capsys.readouterr().err
    write_log(tmp_path / "run", [{"step": 1, "tokens_per_s": 3.0}])
    pytest.importorskip("matplotlib")
    assert main(["plot", str(tmp_path / "run")]) == 2
    assert "no loss, reward, KL, accuracy" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=r"posttrain\[plot\]"):
        plot_run(tmp_path / "run")
