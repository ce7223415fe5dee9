"""What a run leaves on disk when the disk fails it, and with which permissions it writes."""

import errno
import os
import stat

import pytest

from posttrain.engine.checkpoint import CheckpointWriteError, list_checkpoints
from posttrain.io import atomic_dir, atomic_write_text
from tests.engine.test_engine import make_engine


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_says_so(tmp_path, monkeypatch):
    import posttrain.engine.checkpoint as checkpoint

    real_save_file, calls = checkpoint.save_file, []

    def disk_full_at_the_second_checkpoint(tensors, path, *args, **kwargs):
        calls.append(path)
        if "step_4" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", disk_full_at_the_second_checkpoint)
    engine = make_engine(tmp_path, save_steps=2)
    with pytest.raises(CheckpointWriteError, match=r"No space left on device; the last complete checkpoint, .*step_2, "
                                                   r"is intact; free space and re-run"):
        engine.train()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step_2"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_2"]  # the failed write left nothing behind

    monkeypatch.setattr(checkpoint, "save_file", real_save_file)  # space freed: the same run resumes from step 2
    resumed = make_engine(tmp_path, save_steps=2)
    assert resumed.train()["step"] == 6


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_respect_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "file.json", "{}")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inside.txt").write_text("x")
        make_engine(tmp_path, max_steps=2, save_steps=2).train()
    finally:
        os.umask(previous)
    paths = [tmp_path / "file.json", tmp_path / "folder", *(tmp_path / "folder").rglob("*"),
             *(tmp_path / "run").rglob("*")]
    assert len(paths) > 8
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == expected, f"{path}: {oct(mode)}, expected {oct(expected)}"
