"""Files written whole or not at all: a full disk or a killed process never leaves half of one."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from yolotune.errors import YolotuneError

__all__ = ["check_folder", "whole_file"]


def check_folder(path: Path) -> None:
    """Refuse a folder to write into that is a file or a broken link, or lies under one (``mkdir`` would fail later).

    Args:
        path: The folder (it need not exist yet).

    Raises:
        YolotuneError: ``path`` or one of its parents is something other than a folder.
    """
    for folder in (path, *path.parents):
        if folder.is_dir():
            return
        if folder.exists() or folder.is_symlink():
            where = "it is not a folder" if folder == path else f"{folder} is not a folder"
            raise YolotuneError(f"cannot write into the folder {path}: {where}; pass another path")


@contextlib.contextmanager
def whole_file(target: Path, *, exclusive: bool = False) -> Iterator[Path]:
    """A temporary path beside ``target`` to write; it becomes ``target`` when the block ends without error.

    The rename is atomic, so readers see the old file or the new one, never part of it. When the
    block raises (a full disk, a failed build), the temporary file is removed and ``target`` is
    left as it was. The temporary name is hidden and unique per process and thread.

    Args:
        target: The file to write.
        exclusive: Only if ``target`` does not exist yet (a hard link, atomic too): otherwise the
            block's end raises ``FileExistsError`` and ``target`` stays as it was, whoever wrote it.

    Yields:
        Where to write it.
    """
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        yield partial
        if exclusive:
            os.link(partial, target)
        else:
            os.replace(partial, target)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
