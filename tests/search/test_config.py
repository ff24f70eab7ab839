"""Options of a search, checked when the config is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolotune import YolotuneError
from yolotune.search import CandidateSettings, SearchConfig


def test_bad_search_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(YolotuneError, match="--budget must be a positive number"):
        SearchConfig(model="m.pt", data="coco8", budget=0)
    with pytest.raises(YolotuneError, match=r"--budget must be a whole number; got '3'"):
        SearchConfig(model="m.pt", data="coco8", budget="3")  # type: ignore[arg-type]
    with pytest.raises(YolotuneError, match=r"imgsz must be a whole number \(a multiple of 32\); got 160.0"):
        CandidateSettings(imgsz=160.0)  # type: ignore[arg-type]
    with pytest.raises(YolotuneError, match=r"space must be a YAML file or 'module:callable'"):
        SearchConfig(model="m.pt", data="coco8", budget=1, space=print)  # type: ignore[arg-type]
    with pytest.raises(YolotuneError, match=r"calibration memory must be a positive number of GB; got -1"):
        CandidateSettings(calibration_memory_gb=-1)
    with pytest.raises(YolotuneError, match=r"seed must be a whole number from 0 to 2\*\*32 - 1; got -5"):
        CandidateSettings(seed=-5)
    import numpy as np

    numpy_made = CandidateSettings(seed=np.int64(3), calibration_memory_gb=np.float32(2))  # from a dataframe, say
    assert (numpy_made.seed, numpy_made.calibration_memory_gb) == (3, 2.0) and type(numpy_made.seed) is int
    for never in ("nan", "inf"):  # no constraint at all: leave it out
        with pytest.raises(YolotuneError, match=rf"--max-latency-ms must be a positive, finite number; got {never}"):
            SearchConfig(model="m.pt", data="coco8", budget=1, max_latency_ms=float(never))
    # a library caller's settings of another type: one line, not an AttributeError once the search runs
    with pytest.raises(YolotuneError, match=r"settings must be a CandidateSettings \(CandidateSettings\(imgsz="):
        SearchConfig(model="m.pt", data="coco8", budget=1, settings={"imgsz": 320})  # type: ignore[arg-type]
    with pytest.raises(YolotuneError, match=r"^--study is empty: give the study a name, or leave out --study"):
        SearchConfig(model="m.pt", data="coco8", budget=1, study_name=" ")
    for outside in ("a/b", ".", ".."):  # <root>/.. is not a folder of root's: deleting it removed root's parent
        with pytest.raises(YolotuneError) as refused:
            SearchConfig(model="m.pt", data="coco8", budget=1, study_name=outside)
        assert str(refused.value) == (
            f"--study names a folder under --root: not '.' or '..', no '/' or '\\' in it; got {outside!r}"
        )
    # a Path where a str is declared names the same study as the str
    as_path = SearchConfig(model=Path("w") / "m.pt", data=Path("d") / "data.yaml", budget=1)  # type: ignore[arg-type]
    assert (as_path.model, as_path.data, as_path.name) == ("w/m.pt", "d/data.yaml", "m-d-local-cpu-320")
    # a library caller's str root works, and naming the storage creates nothing
    monkeypatch.chdir(tmp_path)
    config = SearchConfig(model="m.pt", data="coco8", budget=1, root="here")  # type: ignore[arg-type]
    assert config.root == Path("here") and config.storage_url.endswith("/here/m-coco8-local-cpu-320.db")
    assert not (tmp_path / "here").exists()
    with pytest.raises(
        YolotuneError, match=r"cannot open storage 'nosuchdb://x': .*; use an SQLAlchemy URL \(sqlite:///"
    ):
        from yolotune.studies import open_storage

        open_storage("nosuchdb://x")
