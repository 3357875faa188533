"""One way to write a file that a crash never leaves half-written: temp file, fsync, rename."""

from __future__ import annotations

import os
from pathlib import Path


def check_writable(folder: str | Path, setting: str) -> None:
    """Create `folder` if needed and write a probe file into it; a ConfigError naming the setting otherwise."""
    from sft_lab.errors import ConfigError

    folder = Path(folder)
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{setting}: cannot write {folder} ({type(e).__name__}: {e.strerror or e}); "
                          "give a folder you can write to") from None


def atomic_write(path: str | Path, data: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a kill: the old file stays whole and no temporary file is left
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
