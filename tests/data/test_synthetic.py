"""The shipped SFT data is reproducible from its generator (which reuses posttrain.tasks) byte for byte."""

from pathlib import Path

from posttrain.data.synthetic import arithmetic_sft, parse_answer, write_jsonl
from posttrain.tasks import split_of

DATA = Path(__file__).resolve().parents[2] / "data" / "sft"


def test_regenerated_files_are_byte_identical(tmp_path):
    train, evaluation = arithmetic_sft(seed=0)
    write_jsonl(train, tmp_path / "train.jsonl")
    write_jsonl(evaluation, tmp_path / "eval.jsonl")
    assert (tmp_path / "train.jsonl").read_bytes() == (DATA / "arithmetic_train.jsonl").read_bytes()
    assert (tmp_path / "eval.jsonl").read_bytes() == (DATA / "arithmetic_eval.jsonl").read_bytes()


def test_rows_are_consistent_and_split():
    train, evaluation = arithmetic_sft(n_train=300, n_eval=30, seed=1)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evaluation}
    assert all(split_of(r["prompt"]) == "eval" for r in evaluation)
    assert all(parse_answer(r["completion"]) == r["answer"] for r in train + evaluation)
