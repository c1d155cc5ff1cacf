"""Files that several processes write: each writer renames its own complete copy into place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``; a reader sees the old file or the new one, never a part.

    The data goes to a temporary file of this writer's own in the same directory (created
    readable by its owner only, then given ``mode``), is flushed to disk and renamed over
    ``path`` with :func:`os.replace`, which is atomic within one file system. Writers running
    at once each rename their own file, and the last rename wins. On any failure the
    temporary file is removed and the error raised; ``path`` is then left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
