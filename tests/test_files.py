"""Files written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolotune._files import whole_file


def test_a_whole_file_replaces_the_old_one_and_a_failed_write_leaves_it(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(OSError, match="No space left"), whole_file(target) as partial:
        partial.write_text("half of the n")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "old"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no partial file left
    with whole_file(target) as partial:
        partial.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_an_exclusive_whole_file_is_created_once_and_never_replaces_another(tmp_path: Path) -> None:
    target = tmp_path / "claim.json"
    with whole_file(target, exclusive=True) as partial:
        partial.write_text("first")
    with pytest.raises(FileExistsError), whole_file(target, exclusive=True) as partial:
        partial.write_text("second")
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["claim.json"]  # no partial file left
