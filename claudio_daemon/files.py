"""Replacing a small file so that a crash, a full disk or a second writer never leaves
half of it: the calibration and the service's state files."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def replace_file(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`.

    A symbolic link is followed: the file it names is replaced and the link stays. The
    temporary file is created as a plain open would (the umask applies) unless `mode`
    says otherwise, and never left behind. OSError when it cannot be done.
    """
    real = path.resolve() if path.is_symlink() else path
    tmp = real.with_name(f".{real.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
