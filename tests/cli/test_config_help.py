"""Config help (``option``), ``posttrain train CONFIG --help`` and deprecated key spellings."""

import dataclasses
import logging
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.config import build_config, config_to_dict, describe_config, option
from posttrain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _fields(cls, prefix=""):
    """(dotted key, field) of every key of ``cls``, sections included."""
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):
            yield from _fields(f.default_factory, f"{prefix}{f.name}.")
        yield f"{prefix}{f.name}", f


def test_every_key_of_every_method_config_and_metric_has_help():
    from posttrain.eval.metrics import METRICS
    from posttrain.trainers import METHODS

    for name, (config_class, _) in {**METHODS, **METRICS}.items():
        missing = [key for key, f in _fields(config_class) if not f.metadata.get("help", "").strip()]
        assert not missing, f"{name} ({config_class.__name__}): keys without help: {missing}"


def test_train_config_help_lists_keys_with_type_default_value_and_help(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["train", "configs/grpo.yaml", "--help"]) == 0
    out = capsys.readouterr().out
    # grpo.yaml sets group_size: 4 (default 8)
    assert ("  group_size: int (>= 1), default 8; configs/grpo.yaml sets 4\n"
            "      G: completions sampled per prompt\n") in out
    assert "  lora.r: int (>= 1), default 16\n" in out and "  data.max_length: int (>= 2), default 1024\n" in out
    for group in ("(EngineConfig)", "(PolicyTrainingConfig)", "lora (LoraSettings)", "data (DataConfig)",
                  "Method-specific (GRPOConfig)"):
        assert group in out, group
    assert max(len(line) for line in out.splitlines()) <= 120


def test_train_help_with_overrides_and_method(capsys):
    assert main(["train", str(ROOT / "configs/grpo.yaml"), "group_size=2", "--help"]) == 0
    assert "sets 2\n" in capsys.readouterr().out
    assert main(["train", "--method", "dpo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Method-specific (DPOConfig)" in out and "  beta: float (> 0), default 0.1\n" in out and " sets " not in out


def test_train_help_without_config_lists_methods(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: posttrain train") and "  grpo       GRPOConfig\n" in out


def test_train_without_config_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2 and "required: config" in capsys.readouterr().err


@dataclasses.dataclass
class Section:
    rank: int = option(8, min=1, aliases=("r",), help="rank")


@dataclasses.dataclass
class Small:
    name: str = option(help="a required key")
    learning_rate: float = option(1e-3, min=0, aliases=("lr",), help="step size")
    section: Section = option(default_factory=Section, help="a section")


def test_deprecated_alias_sets_the_field_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="posttrain.config"):
        with pytest.warns(FutureWarning, match=r"old\.yaml: 'lr' is deprecated; use 'learning_rate'"):
            config = build_config(Small, {"lr": 0.5, "name": "x"}, source="old.yaml")
    assert config.learning_rate == 0.5
    assert "old.yaml: 'lr' is deprecated; use 'learning_rate'" in caplog.text
    assert config_to_dict(config) == {"learning_rate": 0.5, "section": {"rank": 8}, "name": "x"}
    with pytest.warns(FutureWarning, match=r"'section\.r' is deprecated; use 'section\.rank'"):
        assert build_config(Small, {"section": {"r": 4}, "name": "x"}).section.rank == 4


def test_alias_and_new_name_together_is_an_error():
    with pytest.raises(ConfigError, match=r"both 'lr' and 'learning_rate'"):
        build_config(Small, {"lr": 0.5, "learning_rate": 0.1, "name": "x"})


def test_option_keeps_ranges_and_required_keys():
    with pytest.raises(ConfigError, match=r"key 'section.rank' has value 0, expected a value >= 1"):
        build_config(Small, {"section": {"rank": 0}, "name": "x"})
    with pytest.raises(ConfigError, match=r"name"):
        build_config(Small, {})
    field = dataclasses.fields(Small)[1]
    assert dict(field.metadata) == {"help": "step size", "min": 0, "max": None, "above": None, "aliases": ("lr",)}


def test_describe_config_shows_set_values_required_keys_and_unknown_keys():
    text = describe_config(Small, {"lr": "2e-3", "name": "x", "section": {"bogus": 1}}, source="my.yaml")
    assert "  learning_rate: float (>= 0), default 0.001; my.yaml sets 0.002; formerly lr\n      step size\n" in text
    assert "  name: str, required; my.yaml sets \"x\"\n" in text
    assert "  section.rank: int (>= 1), default 8; formerly r\n" in text
    assert "my.yaml also sets keys Small does not have: section.bogus" in text
