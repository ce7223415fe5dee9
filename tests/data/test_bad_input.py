"""Bad input gets one clear line naming the file, row and field, or is accepted; never a traceback. The last two
tests fuzz the loaders and the config parser with hypothesis: every input loads or raises posttrain's own error."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.api import train
from posttrain.cli import main
from posttrain.config import build_config
from posttrain.data import DataConfig, load_examples
from posttrain.data.sources import load_rows
from posttrain.errors import ConfigError, DataError, PosttrainError


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, data, message", [
    ("bad.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b\xff"}\n',
     r"bad.jsonl:2: not valid UTF-8 \(byte 0xff\)"),
    ("bad.csv", b"prompt,completion\na,b\nc,\xfe\n", r"bad.csv:3: not valid UTF-8 \(byte 0xfe\)"),
    ("fake.parquet", b"prompt,completion\na,b\n", r"fake.parquet: not a Parquet file"),
    ("nan.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c", "margin": NaN}\n', r"nan.jsonl:1: NaN is not a"),
    ("inf.json", b'[{"prompt": "a", "completion": "b", "score": -Infinity}]', r"inf.json: -Infinity is not a"),
])
def test_unreadable_files_are_refused_with_their_line(tmp_path, name, data, message):
    with pytest.raises(DataError, match=message):
        load_rows(str(_write(tmp_path, name, data)))


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = _write(tmp_path, "bom.jsonl", b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n')
    assert [r.values for r in load_rows(str(path))] == [{"prompt": "a", "completion": "b"}]
    csv_path = _write(tmp_path, "bom.csv", b"\xef\xbb\xbfprompt,completion\na,b\n")
    assert [r.values for r in load_rows(str(csv_path))] == [{"prompt": "a", "completion": "b"}]


@pytest.mark.parametrize("margin, expected", [("nan", "a finite number"), ("inf", "a finite number"),
                                              ("wide", "a number")])
def test_a_margin_that_is_not_a_finite_number_is_refused_with_its_row(tmp_path, tokenizer, margin, expected):
    path = _write(tmp_path, "pairs.csv", f"prompt,chosen,rejected,margin\nq,good,bad,1.5\nq,good,bad,{margin}\n".encode())
    with pytest.raises(DataError, match=rf"pairs.csv:3: column 'margin' must be {expected}, got '{margin}'"):
        load_examples(DataConfig(path=str(path)), tokenizer, "pairs")


def test_an_unknown_chat_role_is_refused_with_the_roles_the_template_knows(tmp_path, tokenizer):
    rows = [{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    path = _write(tmp_path, "chat.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    with pytest.raises(DataError, match=r"chat.jsonl:1: message 0 has role 'wizard'; the chat template supports "
                                        r"system, user, assistant"):
        load_examples(DataConfig(path=str(path)), tokenizer, "sft")


@pytest.mark.parametrize("overrides, message", [
    (["max_steps=0"], r"key 'max_steps' has value 0, expected a value >= 1"),  # not "an integer or null"
    (["method=dpo", "beta=0"], r"key 'beta' has value 0.0, expected a value > 0"),
    (["method=kto", "beta=0"], r"key 'beta' has value 0.0, expected a value > 0"),
])
def test_config_values_out_of_range_name_the_range(overrides, message):
    from posttrain.api import build_method_config

    with pytest.raises(ConfigError, match=message):
        build_method_config({"method": "sft", "model": "tiny"}, overrides)


@pytest.mark.parametrize("where", ["file", "file/below"])
def test_an_output_dir_on_a_file_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys, where):
    import posttrain.trainers.common as common

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the output_dir was checked")

    monkeypatch.setattr(common, "load_model", no_loading)
    (tmp_path / "file").write_text("not a folder")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"method": "sft", "model": "tiny", "output_dir": str(tmp_path / where),
                                  "data": {"path": "unused.jsonl"}}))
    assert main(["train", str(config)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: output_dir {tmp_path / where}")


# --------------------------------------------------------------------------------------------- fuzzing
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8)
_columns = st.sampled_from(["text", "prompt", "completion", "chosen", "rejected", "label", "margin", "messages", "x"])
_rows = st.lists(st.dictionaries(_columns, _json_values, max_size=4), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows, kind=st.sampled_from(["sft", "pairs", "unpaired"]),
       suffix=st.sampled_from([".jsonl", ".json", ".csv"]), garbage=st.binary(max_size=12))
def test_any_data_file_loads_or_raises_a_posttrain_error(tmp_path, tokenizer, rows, kind, suffix, garbage):
    if suffix == ".jsonl":
        data = "".join(json.dumps(r) + "\n" for r in rows).encode() + garbage
    elif suffix == ".json":
        data = json.dumps(rows).encode() + garbage
    else:
        columns = sorted({c for r in rows for c in r})
        lines = [",".join(columns)] + [",".join(json.dumps(r.get(c, "")) for c in columns) for r in rows]
        data = "\n".join(lines).encode() + garbage
    path = _write(tmp_path, f"fuzz{suffix}", data)
    try:
        load_examples(DataConfig(path=str(path), max_length=32), tokenizer, kind)
    except PosttrainError:
        pass


_config_values = st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats() | st.text(max_size=6) | st.lists(
    st.integers(), max_size=2) | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)
_config_keys = st.sampled_from(["max_steps", "learning_rate", "batch_size", "lora", "data", "beta", "lr_schedule",
                                "report_to", "precision", "seed", "warmup_steps", "unknown_key", "data.max_length"])


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(_config_keys, _config_values, max_size=5),
       method=st.sampled_from(["sft", "dpo", "kto", "grpo", "ppo", "reward"]))
def test_any_config_builds_or_raises_a_config_error(values, method):
    from posttrain.trainers import METHODS

    try:
        build_config(METHODS[method][0], {"method": method, **values})
    except ConfigError:
        pass
