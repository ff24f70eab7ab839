"""Recording trials."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_an_artifact_upload_cut_short_leaves_no_partial_file(tmp_path: Path) -> None:
    import errno
    import io

    from yolotune.search._trials import whole_file_store

    class FillsTheDisk(io.RawIOBase):  # the first megabyte arrives, then the disk is full
        sent = False

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            if self.sent:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.sent = True
            buffer[: len(buffer)] = b"x" * len(buffer)
            return len(buffer)

    store = whole_file_store(tmp_path / "artifacts")
    with pytest.raises(OSError, match="No space left"):
        store.write("an-id", io.BufferedReader(FillsTheDisk()))
    assert not list((tmp_path / "artifacts").iterdir())
    store.write("an-id", io.BytesIO(b"whole"))
    assert (tmp_path / "artifacts" / "an-id").read_bytes() == b"whole"
    assert [p.name for p in (tmp_path / "artifacts").iterdir()] == ["an-id"]
