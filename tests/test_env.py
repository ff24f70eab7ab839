from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from yolotune._env import temporary_dir


def test_temporary_folders_a_killed_process_left_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLOTUNE_TMP", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / "tmp" / f"quantize-{gone.stdout.strip()}-abc"  # its process has exited: a kill -9 left it
    mine = tmp_path / "tmp" / f"quantize-{os.getpid()}-def"  # this process's, in use by another thread
    other = tmp_path / "tmp" / f"trtexec-{gone.stdout.strip()}-ghi"  # another kind: swept by its own kind
    host = socket.gethostname().replace("-", "_")
    dead_here = tmp_path / "tmp" / f"quantize-{gone.stdout.strip()}@{host}-jkl"
    # a Ray worker on another host sharing YOLOTUNE_TMP: that process id means nothing here
    elsewhere = tmp_path / "tmp" / f"quantize-{gone.stdout.strip()}@worker_7-mno"
    for folder in (dead, mine, other, dead_here, elsewhere):
        (folder / "pre.onnx").parent.mkdir(parents=True)
        (folder / "pre.onnx").write_bytes(b"13 MB in real life")
    with temporary_dir("quantize") as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path / "tmp"
        assert tmp.name.startswith(f"quantize-{os.getpid()}@{host}-")
        assert not dead.exists() and not dead_here.exists() and mine.exists() and other.exists() and elsewhere.exists()
    assert not tmp.exists()


def test_a_fallback_font_cut_short_by_a_full_disk_is_copied_again(tmp_path: Path) -> None:
    import matplotlib

    from yolotune._env import _install_fallback_fonts

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    (tmp_path / "Arial.ttf").write_bytes(source.read_bytes()[:1000])  # what an interrupted copy leaves
    _install_fallback_fonts(tmp_path)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        assert (tmp_path / name).read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Arial.Unicode.ttf", "Arial.ttf"]  # no partial copies
