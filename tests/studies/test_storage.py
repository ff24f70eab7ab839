from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from yolotune import YolotuneError
from yolotune.cli import app
from yolotune.studies import (
    default_storage_url,
    delete_study,
    deployable_file,
    open_storage,
    storage_lock,
    study_dir,
    study_folder,
)
from yolotune.studies._storage import claim_folder


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_study_file_is_locked_across_processes_and_again_within_one(tmp_path: Path, kind: str) -> None:
    url = default_storage_url(tmp_path, "s") if kind == "sqlite" else f"journal:{tmp_path / 's.log'}"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from yolotune.studies import storage_lock\n"
            f"with storage_lock({url!r}):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(2)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with storage_lock(url), storage_lock(url):  # re-entrant in this process
            waited = time.monotonic() - start
        assert waited > 1.0  # until the other process let go
    finally:
        holder.wait(timeout=30)
    if kind == "journal":  # Optuna's own write lock (the symlink <file>.lock) stays free
        assert not (tmp_path / "s.log.lock").exists() and (tmp_path / "s.log.yolotune-lock").exists()
        open_storage(url).create_new_study(directions=[optuna.study.StudyDirection.MINIMIZE], study_name="x")
    start = time.monotonic()
    with storage_lock("mysql+pymysql://u@127.0.0.1:1/db"):  # no lock taken (and no server reached)
        assert time.monotonic() - start < 0.5


def _study_with_files(root: Path, name: str, storage: str | None = None) -> Path:
    """A study with one trial, and the folder of trial files and artifacts a search leaves."""
    study = optuna.create_study(study_name=name, storage=open_storage(storage or default_storage_url(root, name)))
    study.add_trial(optuna.trial.create_trial(value=1.0))
    folder = study_dir(root, name)
    (folder / "trials" / "0").mkdir(parents=True)
    (folder / "trials" / "0" / "model.onnx").write_bytes(b"onnx")
    (folder / "artifacts").mkdir()
    return folder


def test_deleting_a_study_removes_its_trials_files_and_its_own_sqlite_file(tmp_path: Path) -> None:
    keep = _study_with_files(tmp_path, "keep")
    gone = _study_with_files(tmp_path, "gone")
    assert delete_study(study="gone", root=tmp_path) == [gone, tmp_path / "gone.db"]
    assert not gone.exists() and not (tmp_path / "gone.db").exists() and not (tmp_path / "gone.db.lock").exists()
    assert keep.is_dir() and (tmp_path / "keep.db").is_file()
    with pytest.raises(YolotuneError, match=r"no study 'gone' in .* \(it holds keep\)"):
        delete_study(study="gone", root=tmp_path)
    # two studies in one storage: the file stays for the other
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    _study_with_files(tmp_path, "a", shared)
    _study_with_files(tmp_path, "b", shared)
    delete_study(study="a", storage=shared, root=tmp_path)
    assert (tmp_path / "shared.db").is_file() and optuna.get_all_study_names(storage=shared) == ["b"]


def test_tune_delete_asks_first_unless_told_not_to(tmp_path: Path) -> None:
    folder = _study_with_files(tmp_path, "s")
    runner = CliRunner()
    asked = runner.invoke(app, ["delete", "--study", "s", "--root", str(tmp_path)], input="n\n")
    assert asked.exit_code == 1 and "delete study 's' (1 trials, 0 MB in" in asked.output and folder.is_dir()
    assert asked.output.splitlines()[-1] == "nothing deleted (--yes deletes without asking)"
    unanswered = runner.invoke(app, ["delete", "--study", "s", "--root", str(tmp_path)], input="")  # stdin closed
    assert unanswered.exit_code == 1 and "nothing deleted" in unanswered.output and folder.is_dir()
    assert "error" not in asked.output + unanswered.output
    done = runner.invoke(app, ["delete", "--study", "s", "--root", str(tmp_path), "--yes"])
    assert done.exit_code == 0 and f"removed {folder}" in done.output and not folder.exists()


def test_a_study_being_searched_on_this_host_is_not_deleted_until_its_search_stops(tmp_path: Path) -> None:
    from yolotune._env import _started, process_tag
    from yolotune.studies._storage import DRIVER_ATTR

    folder = _study_with_files(tmp_path, "s")
    study = optuna.load_study(study_name="s", storage=default_storage_url(tmp_path, "s"))
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a `tune run` still running
    try:
        trial = study.ask()
        time.sleep(0.2)
        trial.set_user_attr(DRIVER_ATTR, {**process_tag(), "pid": driver.pid, "started": _started(driver.pid)})
        refused = CliRunner().invoke(app, ["delete", "--study", "s", "--root", str(tmp_path), "--yes"])
        assert refused.exit_code == 2 and folder.is_dir() and (tmp_path / "s.db").is_file()
        assert refused.output.strip() == (
            f"error: study 's' is being searched: trial 1 runs in process {driver.pid} on this host; stop that "
            "`tune run` first (Ctrl-C), then delete"
        )
    finally:
        driver.kill()
        driver.wait(timeout=30)
    # killed (kill -9 leaves its trial RUNNING): nothing stops the deletion any more
    assert delete_study(study="s", root=tmp_path) == [folder, tmp_path / "s.db"]


def test_a_study_is_not_deleted_while_a_search_marks_its_folder_even_with_no_trial_running(tmp_path: Path) -> None:
    from yolotune.studies import live_searches

    folder = _study_with_files(tmp_path, "s")
    code = (
        "import sys, time; from pathlib import Path; from yolotune.studies import searching\n"
        f"with searching(Path({str(folder)!r})):\n    print('marked', flush=True); time.sleep(60)"
    )
    search = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert search.stdout is not None and search.stdout.readline() == "marked\n"
        assert [tag["pid"] for tag in live_searches(folder)] == [search.pid]
        with pytest.raises(YolotuneError) as refused:
            delete_study(study="s", root=tmp_path)
        assert str(refused.value) == (
            f"study 's' is being searched by process {search.pid} on this host; stop that `tune run` first (Ctrl-C), "
            "then delete"
        )
        assert folder.is_dir() and (tmp_path / "s.db").is_file()
    finally:
        search.kill()  # kill -9: its mark stays, naming a process that is gone
        search.wait(timeout=30)
    assert len(list((folder / ".searches").iterdir())) == 1
    assert live_searches(folder) == [] and not list((folder / ".searches").iterdir())  # the stale mark is removed
    assert delete_study(study="s", root=tmp_path) == [folder, tmp_path / "s.db"]


def test_a_study_named_dot_dot_never_deletes_the_folder_above_root(tmp_path: Path) -> None:
    root = tmp_path / "project" / "studies"
    (root / "other").mkdir(parents=True)  # another study's folder, beside the root's own files
    (tmp_path / "project" / "precious.txt").write_text("mine")
    for name in ("..", "."):  # made by hand, or by an older yolotune that did not refuse such names
        url = default_storage_url(root, name)  # <root>/...db, <root>/..db: the folder beside it would be <root>/..
        optuna.create_study(study_name=name, storage=open_storage(url))
        assert delete_study(study=name, root=root) == [root / f"{name}.db"]
    assert (tmp_path / "project" / "precious.txt").read_text() == "mine" and (root / "other").is_dir()


def _searched(url: str, name: str, store: Path, artifact_id: str) -> None:
    """A study as `tune run --storage URL` leaves it: its artifact store and its trial's file ids recorded."""
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    study.set_user_attr("artifact_store", str(store))
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"artifacts": {"model.onnx": artifact_id}}))


def test_a_study_opened_by_url_deletes_its_own_folder_never_another_of_the_same_name(tmp_path: Path) -> None:
    own, other = tmp_path / "a" / "studies" / "S", tmp_path / "b" / "studies" / "S"
    url = f"sqlite:///{tmp_path / 'a' / 'studies' / 'S.db'}"
    _searched(url, "S", own / "artifacts", "id-1")
    (own / "artifacts").mkdir(parents=True)
    (own / "artifacts" / "id-1").write_bytes(b"onnx")
    _study_with_files(tmp_path / "b" / "studies", "S")  # another project's study of the same name
    # run from b's project folder: --root defaults to its studies/, which holds the other S; the
    # folder S's search recorded is not deleted either (a copy of the study file records the original's)
    args = ["delete", "--study", "S", "--storage", url, "--root", str(tmp_path / "b" / "studies"), "--yes"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert f"left {own}/, the trial files its search recorded" in " ".join(done.output.split())
    assert own.is_dir() and (other / "trials" / "0" / "model.onnx").is_file()
    # with the --root that holds them, its own files (found by an artifact of its own) go
    _searched(url, "S", own / "artifacts", "id-1")
    assert delete_study(study="S", storage=url, root=tmp_path / "a" / "studies") == [own]
    url = f"sqlite:///{tmp_path / 'n.db'}"
    _searched(url, "N", tmp_path / "gone" / "N" / "artifacts", "id-3")
    unrelated = _study_with_files(tmp_path / "c", "N")  # same name, none of N's files
    assert delete_study(study="N", storage=url, root=tmp_path / "c") == [] and unrelated.is_dir()


def test_a_copied_studies_folder_deletes_its_own_copy_never_the_original(tmp_path: Path) -> None:
    import shutil

    original = _study_with_files(tmp_path / "a", "S")
    study = optuna.load_study(study_name="S", storage=default_storage_url(tmp_path / "a", "S"))
    study.set_user_attr("artifact_store", str(original / "artifacts"))  # recorded by its search, in a/
    shutil.copytree(tmp_path / "a", tmp_path / "backup")
    copy = tmp_path / "backup" / "S"
    assert delete_study(study="S", root=tmp_path / "backup") == [copy, tmp_path / "backup" / "S.db"]
    assert (original / "trials" / "0" / "model.onnx").is_file() and (tmp_path / "a" / "S.db").is_file()


def test_a_report_of_a_study_opened_by_url_never_lands_in_another_studys_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    optuna.create_study(study_name="S", storage=open_storage(url)).add_trial(optuna.trial.create_trial(value=1.0))
    other = _study_with_files(tmp_path / "b" / "studies", "S")  # same name, another project's
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["report", "--study", "S", "--storage", url, "--root", "b/studies"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "S-report.html").is_file() and not (other / "report.html").exists()


def test_a_copied_study_file_alone_deletes_no_folder(tmp_path: Path) -> None:
    import shutil

    original = _study_with_files(tmp_path / "a", "S")
    study = optuna.load_study(study_name="S", storage=default_storage_url(tmp_path / "a", "S"))
    study.set_user_attr("artifact_store", str(original / "artifacts"))
    (tmp_path / "onlydb").mkdir()
    shutil.copy(tmp_path / "a" / "S.db", tmp_path / "onlydb" / "S.db")  # a backup of the database alone
    assert delete_study(study="S", root=tmp_path / "onlydb") == [tmp_path / "onlydb" / "S.db"]
    assert (original / "trials" / "0" / "model.onnx").is_file()


def test_a_study_of_the_same_name_in_another_storage_is_refused_the_folder_of_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_url, second_url = f"sqlite:///{tmp_path / 'a.db'}", f"journal:{tmp_path / 'b.log'}"
    first = optuna.create_study(study_name="S", storage=open_storage(first_url))
    claim_folder(first, tmp_path, first_url)
    folder = study_dir(tmp_path, "S")
    (folder / "trials" / "0").mkdir(parents=True)
    (folder / "trials" / "0" / "model.onnx").write_bytes(b"first's")
    claim_folder(first, tmp_path, first_url)  # resumed: its own folder
    second = optuna.create_study(study_name="S", storage=open_storage(second_url))
    with pytest.raises(YolotuneError, match=r"holds the trial files of another study named 'S' \(in sqlite:///"):
        claim_folder(second, tmp_path, second_url)
    assert "folder_id" not in second.user_attrs
    # delete and reports tell the two apart by the claim, whatever the storage
    assert study_folder(first, tmp_path, default_storage=False) == folder
    assert study_folder(second, tmp_path, default_storage=True) is None
    assert delete_study(study="S", storage=second_url, root=tmp_path) == []
    assert (folder / "trials" / "0" / "model.onnx").read_bytes() == b"first's"
    # a study file deleted by hand: the next study of that name in it is told so
    (tmp_path / "a.db").unlink()
    again = optuna.create_study(study_name="S", storage=open_storage(first_url))
    with pytest.raises(YolotuneError, match=r"an earlier study named 'S' in this storage, since deleted; give"):
        claim_folder(again, tmp_path, first_url)
    # a folder from before folders were claimed: a new study is refused its measured trials, the study that
    # has trials takes it
    legacy = _study_with_files(tmp_path / "old", "L")
    fresh = optuna.create_study(study_name="L", storage=open_storage(f"journal:{tmp_path / 'l.log'}"))
    claim_folder(fresh, tmp_path / "old", "journal:l.log")  # nothing measured there: nothing to lose
    assert fresh.user_attrs["folder_id"]
    (legacy / "yolotune-study.json").unlink()
    (legacy / "trials" / "0" / "metrics.json").write_text("{}")
    fresh = optuna.create_study(study_name="L", storage=open_storage(f"journal:{tmp_path / 'l2.log'}"))
    with pytest.raises(YolotuneError, match="already holds measured trials of an earlier study named 'L'"):
        claim_folder(fresh, tmp_path / "old", "journal:l2.log")
    owner = optuna.load_study(study_name="L", storage=open_storage(default_storage_url(tmp_path / "old", "L")))
    claim_folder(owner, tmp_path / "old", "sqlite:///old/L.db")
    assert study_folder(owner, tmp_path / "old", default_storage=True) == legacy
    # a claim file that cannot be read claims the folder for nobody: not deleted as anyone's, refused
    (legacy / "yolotune-study.json").write_text("{not json")
    assert study_folder(owner, tmp_path / "old", default_storage=True) is None
    with pytest.raises(YolotuneError, match=r"yolotune-study\.json cannot be read: if the folder holds this study"):
        claim_folder(owner, tmp_path / "old", "sqlite:///old/L.db")
    # two searches claiming one folder at once: both find no claim, the file is created once, the later one refused
    from yolotune.studies import _storage

    racer = optuna.create_study(study_name="R")
    study_dir(tmp_path, "R").mkdir()
    claimed = study_dir(tmp_path, "R") / "yolotune-study.json"
    claimed.write_text('{"id": "the other search", "storage": "x"}')  # written after this search looked
    real, looked = _storage._folder_owner, []
    monkeypatch.setattr(_storage, "_folder_owner", lambda folder: real(folder) if looked else looked.append(folder))
    with pytest.raises(YolotuneError, match=r"another study named 'R' \(in x\)"):
        claim_folder(racer, tmp_path, "sqlite:///:memory:")
    assert "the other search" in claimed.read_text() and "folder_id" not in racer.user_attrs
    monkeypatch.undo()
    # a password in the storage URL is not written into the folder
    pg = optuna.create_study(study_name="P")
    claim_folder(pg, tmp_path, "postgresql+psycopg://me:secret@db.example/studies")
    assert "secret" not in (study_dir(tmp_path, "P") / "yolotune-study.json").read_text()


def test_a_trial_file_written_over_since_its_trial_was_told_is_taken_from_the_artifact_store(tmp_path: Path) -> None:
    store = tmp_path / "artifacts"
    store.mkdir()
    (store / "id-1").write_bytes(b"measured bytes")
    source = tmp_path / "trials" / "0" / "model.int8.onnx"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"measured bytes")
    trial = optuna.trial.create_trial(
        value=1.0, user_attrs={"artifact": str(source), "artifacts": {"model.int8.onnx": "id-1"}}
    )
    assert deployable_file(trial, store) == source
    source.write_bytes(b"another study's bytes")
    assert deployable_file(trial, store) == store / "id-1"
    assert deployable_file(trial, None) == source  # no store to tell: the file there


def test_storage_urls_missing_a_slash_or_a_scheme_say_how_to_write_them(tmp_path: Path, monkeypatch) -> None:
    from yolotune.studies import load_study

    monkeypatch.chdir(tmp_path)
    _study_with_files(tmp_path, "s")
    db = tmp_path / "s.db"
    relative = str(db).lstrip("/")
    with pytest.raises(YolotuneError) as three_slashes:  # the absolute path given as sqlite:/// + /path
        load_study(storage=f"sqlite:///{relative}")
    assert f"(for {db}, an absolute path, write four slashes: sqlite:///{db})" in str(three_slashes.value)
    with pytest.raises(YolotuneError) as bare:  # a path where a URL goes
        open_storage(str(db))
    assert str(bare.value).endswith(f"(for the file {db}: sqlite:///{db})")
    journal = tmp_path / "j.log"
    journal.write_text("")
    with pytest.raises(YolotuneError) as slash:  # the journal's own spelling, not SQLite's
        load_study(storage=f"journal:{str(journal).lstrip('/')}")
    assert f"(for {journal}, an absolute path, write journal:{journal})" in str(slash.value)
    with pytest.raises(YolotuneError) as scheme:  # a scheme of another kind: no advice to prefix sqlite:///
        open_storage("sqlite:x.db")
    assert "for the file" not in str(scheme.value)
