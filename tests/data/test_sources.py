import json

import pytest

from posttrain.data import DataConfig, load_rows, normalize_rows, parse_split
from posttrain.errors import DataError

ROWS = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]


def test_jsonl_json_csv_parquet_and_disk_agree(tmp_path, write_jsonl):
    import datasets

    jsonl = write_jsonl("d.jsonl", ROWS)
    (tmp_path / "d.json").write_text(json.dumps({"data": ROWS}))
    (tmp_path / "d.csv").write_text("prompt,completion\n" + "".join(f"{r['prompt']},{r['completion']}\n" for r in ROWS))
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "folder"))
    for path in [jsonl, tmp_path / "d.json", tmp_path / "d.csv", tmp_path / "d.parquet", tmp_path / "folder"]:
        rows = load_rows(str(path))
        assert [r.values for r in rows] == ROWS, path
    assert load_rows(str(jsonl))[3].where.endswith("d.jsonl:4")
    assert load_rows(str(tmp_path / "d.csv"))[0].where.endswith("d.csv:2")


def test_split_slices(write_jsonl):
    path = str(write_jsonl("d.jsonl", ROWS))
    assert [r.values["prompt"] for r in load_rows(path, "train[:3]")] == ["q0", "q1", "q2"]
    assert [r.values["prompt"] for r in load_rows(path, "train[-2:]")] == ["q8", "q9"]
    assert [r.values["prompt"] for r in load_rows(path, "train[10%:30%]")] == ["q1", "q2"]
    assert parse_split(None)[0] == ""
    with pytest.raises(DataError, match="expected a name with an optional slice"):
        parse_split("train[::2]")


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        load_rows(str(path))


def test_missing_column_names_row_and_key(write_jsonl):
    rows = load_rows(str(write_jsonl("d.jsonl", ROWS[:2] + [{"prompt": "x", "answer": "y"}])))
    with pytest.raises(DataError, match=r"d\.jsonl:3: missing column 'completion'"):
        normalize_rows(rows, DataConfig(), ("prompt_completion",))


def test_column_remapping(write_jsonl):
    rows = load_rows(str(write_jsonl("d.jsonl", [{"question": "q", "answer": "a"}])))
    fmt, out = normalize_rows(rows, DataConfig(prompt_column="question", completion_column="answer"), ("prompt_completion",))
    assert fmt == "prompt_completion" and out[0].values == {"prompt": "q", "completion": "a"}


def test_undetectable_format_lists_columns(write_jsonl):
    rows = load_rows(str(write_jsonl("d.jsonl", [{"question": "q"}])))
    with pytest.raises(DataError, match=r"cannot tell the dataset format.*question"):
        normalize_rows(rows, DataConfig(), ("prompt_completion", "text"))


def test_empty_dataset_and_empty_response(tmp_path, write_jsonl):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        load_rows(str(tmp_path / "empty.jsonl"))
    rows = load_rows(str(write_jsonl("d.jsonl", [{"prompt": "q", "completion": "  "}])))
    with pytest.raises(DataError, match=r"d\.jsonl:1: column 'completion' is empty"):
        normalize_rows(rows, DataConfig(), ("prompt_completion",))


def test_missing_file_is_named():
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        load_rows("data/nope.jsonl")
