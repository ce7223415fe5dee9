"""SFT killed with SIGKILL at random moments of its training and run again each time ends exactly as the
uninterrupted run recorded in presets_golden.json; every checkpoint left behind loads. The whole campaign, over the
methods that carry state, is `python tests/invariants/sigkill.py` (docs/reliability.md)."""

from sigkill import main


def test_sft_survives_sigkills(capsys):
    code = main(["--kills", "2", "--seed", "1", "sft"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "sft: 0 kills" not in out  # at least one kill landed while it trained
    assert "same logs and weights as the uninterrupted run" in out
