"""Writing outputs so that a crash never leaves half of them: a temporary sibling, fsync, then an atomic rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


TEMPORARY_PREFIXES = (".tmp-", ".old-")  # the names of what an interrupted write leaves behind
_OPEN_TEMPORARY_DIRS: set[Path] = set()  # temporary folders of the atomic_dir writes in progress


class atomic_dir:
    """``with atomic_dir(path) as tmp:`` write into ``tmp``; on success it replaces ``path``; on error nothing changes.

    Writing into the temporary folder of an enclosing ``atomic_dir`` (a model saved into a checkpoint being written)
    goes straight into it: the enclosing rename already makes it atomic, and temporary names never nest."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.nested = self.path.resolve() in _OPEN_TEMPORARY_DIRS
        if self.nested:
            return self.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIXES[0]}{self.path.name}-", dir=self.path.parent))
        os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the result is an ordinary folder
        _OPEN_TEMPORARY_DIRS.add(self.tmp.resolve())
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if self.nested:
            return False
        _OPEN_TEMPORARY_DIRS.discard(self.tmp.resolve())
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        _fsync_tree(self.tmp, file_mode=0o666 & ~current_umask())
        old = None
        if self.path.exists():
            old = self.path.with_name(f"{TEMPORARY_PREFIXES[1]}{self.path.name}-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (POSIX can only read it by setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_temporary_files(folder: Path) -> list[str]:
    """Remove what interrupted atomic writes left directly in ``folder`` (only names they create); returns them."""
    removed = []
    for path in sorted(folder.glob(".*")) if folder.is_dir() else []:
        if path.name.startswith(TEMPORARY_PREFIXES) and path.resolve() not in _OPEN_TEMPORARY_DIRS:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _fsync_tree(root: Path, file_mode: int) -> None:
    """Flush every file to disk, with the mode an ordinary write under the umask gives (safetensors writes 0600)."""
    for path in root.rglob("*"):
        if path.is_file():
            os.chmod(path, file_mode)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
