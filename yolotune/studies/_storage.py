"""Where studies live: a SQLite file per study under ``studies/`` by default, or any Optuna URL."""

from __future__ import annotations

import contextlib
import filecmp
import json
import shlex
import shutil
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from yolotune._env import owner_name, process_tag, tag_alive, tag_gone, tag_pid
from yolotune._files import whole_file
from yolotune.errors import YolotuneError, disk_full

__all__ = [
    "artifact_dir",
    "claim_folder",
    "default_storage_url",
    "delete_study",
    "deployable_file",
    "find_artifact_dir",
    "live_searches",
    "load_study",
    "open_storage",
    "recorded_folder",
    "searching",
    "shown_url",
    "storage_lock",
    "study_dir",
    "study_folder",
]


def study_dir(root: Path, study_name: str) -> Path:
    """Directory of a study's artifacts (``<root>/<study>``)."""
    return root / study_name


def artifact_dir(root: Path, study_name: str) -> Path:
    """Directory of the study's Optuna artifact store (``<root>/<study>/artifacts``)."""
    path = study_dir(root, study_name) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def study_folder(study: optuna.Study, root: Path, *, default_storage: bool) -> Path | None:
    """The folder of a study's trial files under ``root``, or ``None`` when none there is surely its own.

    Args:
        study: The study.
        root: The studies directory the command was given (``--root``).
        default_storage: The study was opened from its default SQLite file under ``root``, so
            ``<root>/<study>`` is its folder by construction.

    Otherwise ``<root>/<study>`` counts only when its artifact store holds one of this study's
    files: a folder of the same name may belong to another study. The folder the study's last
    search recorded is never taken: a copied study file records the original's folder, which
    deleting the copy must not touch (``recorded_folder`` names it for a message).
    """
    beside = study_dir(root, study.study_name)
    if beside.name != study.study_name or beside.name in ("", ".", ".."):  # a name that is not one folder of root's
        return None
    if not beside.is_dir():
        return None
    owner = _folder_owner(beside)
    if owner is not None:  # claimed by a search (claim_folder): its own only if this study claimed it
        return beside if owner.get("id") and owner.get("id") == study.user_attrs.get("folder_id") else None
    if default_storage:
        return beside
    for trial in study.get_trials(deepcopy=False):
        ids: dict[str, str] = trial.user_attrs.get("artifacts") or {}
        if any((beside / "artifacts" / artifact_id).is_file() for artifact_id in ids.values()):
            return beside
    return None


#: The file in ``<root>/<study>`` naming the study whose trial files it holds (``claim_folder``).
OWNER_FILE = "yolotune-study.json"


def claim_folder(study: optuna.Study, root: Path, storage_url: str) -> None:
    """Make ``<root>/<study>`` the folder of ``study``'s trial files, or refuse one that holds another study's.

    Two studies of one name in two storages (another ``--storage``, the same ``--root``) would
    otherwise write the same ``trials/N``: each would overwrite the other's models, and export and
    delete would take one's files for the other's. The first search of a study gives it an id
    (user attribute ``folder_id``) and creates ``yolotune-study.json`` in the folder with it, at
    once or not at all (two searches claiming one folder at the same time: one gets it).

    Args:
        study: The study a search is about to run.
        root: The studies directory (``--root``).
        storage_url: Where the study is stored, named in the file for whoever finds the folder.

    Raises:
        YolotuneError: The folder is another study's, or a new study's folder already holds measured
            trials from before folders were claimed.
    """
    folder = study_dir(root, study.study_name)
    mine = study.user_attrs.get("folder_id")
    owner = _folder_owner(folder)
    if owner is None:
        if mine is None and not study.get_trials(deepcopy=False) and _holds_measurements(folder):
            raise YolotuneError(
                f"{folder} already holds measured trials of an earlier study named '{study.study_name}'; give this "
                "new study its own folder with --root DIR or another --study name (or delete the folder)"
            )
        record = {"study": study.study_name, "id": mine or uuid.uuid4().hex, "storage": shown_url(storage_url)}
        owner = _create_owner_file(folder, record)  # ours, or what a search claiming it meanwhile wrote
        mine = mine or (record["id"] if owner.get("id") == record["id"] else None)
    if not owner.get("id") or owner.get("id") != mine:
        if not owner.get("id"):
            raise YolotuneError(
                f"{folder / OWNER_FILE} cannot be read: if the folder holds this study's trial files, delete that "
                "file to claim it again; else give this study its own folder with --root DIR"
            )
        where = owner.get("storage") or "a storage it does not name"
        whose = (
            f"an earlier study named '{study.study_name}' in this storage, since deleted"
            if where == shown_url(storage_url)
            else f"another study named '{study.study_name}' (in {where})"
        )
        raise YolotuneError(
            f"{folder} holds the trial files of {whose}; give this one its own folder with --root DIR or another "
            "--study name (or, if that study is gone, delete the folder)"
        )
    if study.user_attrs.get("folder_id") != mine:
        study.set_user_attr("folder_id", mine)


def _create_owner_file(folder: Path, record: dict[str, str]) -> dict[str, Any]:
    """Create ``yolotune-study.json`` in ``folder`` with ``record`` unless it exists; return what it holds then."""
    folder.mkdir(parents=True, exist_ok=True)
    marker, text = folder / OWNER_FILE, json.dumps(record, indent=1) + "\n"
    try:
        with whole_file(marker, exclusive=True) as staged:  # a half-written file would lock the folder
            staged.write_text(text)
    except FileExistsError:
        pass  # another search's claim, made meanwhile
    except OSError:  # a file system without hard links: created exclusively, then written
        with contextlib.suppress(FileExistsError), open(marker, "x") as out:
            out.write(text)
    return _folder_owner(folder) or {}


def _folder_owner(folder: Path) -> dict[str, Any] | None:
    """What ``yolotune-study.json`` in ``folder`` says (``None``: no such file; ``{}``: unreadable)."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _holds_measurements(folder: Path) -> bool:
    """Whether a study folder holds a measured trial (its ``metrics.json``) or a registered artifact."""
    artifacts = folder / "artifacts"
    return any(folder.glob("trials/*/metrics.json")) or (artifacts.is_dir() and any(artifacts.iterdir()))


def shown_url(url: str) -> str:
    """``url`` without its password."""
    if url.startswith(("sqlite:", "journal:")):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def recorded_folder(study: optuna.Study) -> Path | None:
    """The folder of trial files the study's last search recorded, when it exists on this host."""
    recorded = study.user_attrs.get("artifact_store")
    folder = Path(str(recorded)).parent if recorded else None
    return folder if folder is not None and folder.name == study.study_name and folder.is_dir() else None


def find_artifact_dir(study: optuna.Study, root: Path | None = None) -> Path | None:
    """A study's artifact store, wherever it is opened from: the one it recorded, else ``<root>/<study>``."""
    beside = study_dir(root, study.study_name) / "artifacts" if root is not None else None
    for path in (study.user_attrs.get("artifact_store"), beside):
        if path and Path(path).is_dir():
            return Path(path)
    return None


def deployable_file(trial: optuna.trial.FrozenTrial, artifacts: Path | None = None) -> Path | None:
    """A trial's deployable file on this host: where its search wrote it, else its copy in the artifact store.

    The copy is taken too when the trial folder's file differs from it: the copy was registered when
    the trial was told, and the folder may have been written over since (by a study of the same
    name in another storage, before folders were claimed).

    Args:
        trial: A measured trial (user attributes ``artifact`` and ``artifacts``).
        artifacts: The study's artifact store (``find_artifact_dir``); a study folder moved or a
            trial folder deleted still has its files there.
    """
    source = Path(str(trial.user_attrs.get("artifact", "")))
    ids: dict[str, str] = trial.user_attrs.get("artifacts") or {}
    artifact_id = ids.get(source.name)
    stored = Path(artifacts) / artifact_id if artifact_id and artifacts is not None else None
    if stored is not None and not stored.is_file():
        stored = None  # Optuna's file-system store keeps each file under its id
    if source.is_file() and (stored is None or filecmp.cmp(source, stored, shallow=False)):
        return source
    return stored  # the copy registered when the trial was told: its trial folder's file was replaced since


def default_storage_url(root: Path, study_name: str) -> str:
    """SQLite URL of the default per-study file ``<root>/<study>.db`` (``open_storage`` makes the folder)."""
    return f"sqlite:///{(Path(root) / f'{study_name}.db').resolve()}"


_LOCKS: dict[str, object] = {}
_LOCKS_GUARD = threading.Lock()
_KEY = zlib.crc32(b"yolotune.storage_lock")  # one key per PostgreSQL database, every study


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Hold, across processes, the lock of a SQLite or journal file or a PostgreSQL database (others: no lock).

    SQLite lets two drivers both read a queued trial as WAITING and both mark it RUNNING, and both
    create the same tables of a new file; drivers serialise those steps on ``<file>.lock``. On
    PostgreSQL and the journal two drivers starting a new study could both queue its reference
    trials; they serialise on a session advisory lock, which the server releases if a driver dies
    holding it, or on ``<file>.yolotune-lock`` beside the journal.
    Taking it again in the same process while held is allowed (one lock object per file or URL).
    """
    if url.startswith(("postgresql:", "postgresql+")):
        with _LOCKS_GUARD:
            server = _LOCKS.setdefault(url, _AdvisoryLock(url))
        assert isinstance(server, _AdvisoryLock)
        with server.held():
            yield
        return
    lock_file = _lock_file(url)
    if lock_file is None:
        yield
        return
    import filelock

    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(str(lock_file), filelock.FileLock(lock_file))
    assert isinstance(lock, filelock.FileLock)
    try:
        lock.acquire()
    except OSError:  # a folder this user cannot write to: no run writes there either, nothing to serialise
        yield
        return
    try:
        yield
    finally:
        lock.release()


class _AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection of its own, re-entrant within this process.

    The connection is in autocommit (no transaction idles while the lock is held, which servers
    with ``idle_in_transaction_session_timeout`` would end) and comes from one engine's pool.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._guard = threading.RLock()
        self._depth = 0
        self._connection: Any = None
        self._engine: Any = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._guard:
            if self._depth == 0:
                self._connection = self._lock()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._connection is not None:
                    import sqlalchemy

                    with contextlib.suppress(Exception):  # a session lost meanwhile took its lock with it
                        self._connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _KEY})
                    with contextlib.suppress(Exception):
                        self._connection.close()
                    self._connection = None

    def _lock(self) -> Any:
        """A connection holding the lock, or ``None`` when the server cannot be reached (the open reports it)."""
        import sqlalchemy

        try:
            if self._engine is None:  # autocommit: the session never idles in a transaction while it holds
                self._engine = sqlalchemy.create_engine(self._url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
            connection = self._engine.connect()
        except Exception:
            return None
        try:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _KEY})
        except Exception:
            connection.close()
            return None
        return connection


def _lock_file(url: str) -> str | None:
    """The file ``storage_lock`` locks for a SQLite or journal URL (``None``: another storage)."""
    if url.startswith("journal:"):  # Optuna's own write lock of the journal is the symlink <file>.lock
        file = url.removeprefix("journal:")
        return f"{Path(file).resolve()}.yolotune-lock" if file else None
    sqlite = _sqlite_file(url)
    return f"{sqlite}.lock" if sqlite is not None else None


def _sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names (``None`` for other URLs and in-memory databases)."""
    if not url.startswith("sqlite:///"):
        return None
    file = url.removeprefix("sqlite:///").split("?")[0]
    return Path(file).resolve() if file and file != ":memory:" else None


def open_storage(url: str, *, heartbeat_interval: int | None = None) -> optuna.storages.BaseStorage:
    """Open an Optuna storage URL (RDB via SQLAlchemy, or ``journal:<file>``).

    Args:
        url: Storage URL.
        heartbeat_interval: Seconds between a driver's heartbeats for its running trials (RDB
            storages only; a RUNNING trial without a heartbeat for three intervals is stale).

    Raises:
        YolotuneError: The URL cannot be opened; one line with the reason.
    """
    if url.startswith(("sqlite:///", "journal:")):  # SQLite and the journal make the file, not its folder
        file = url.removeprefix("sqlite:///").removeprefix("journal:").split("?")[0]
        if file and file != ":memory:":
            with contextlib.suppress(OSError):  # an unusable folder is reported by the open below
                Path(file).parent.mkdir(parents=True, exist_ok=True)
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        with storage_lock(url):  # two drivers making a new SQLite file would both create its tables
            return _rdb(url, heartbeat_interval)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if disk_full(reason):
            raise YolotuneError(f"cannot open storage '{url}': {reason[:200]}; free some space on its disk") from exc
        scheme = url.split("/")[0]  # a bare path has none: `x.db`, `/tmp/x.db`, `studies/x.db`
        bare = "" if ":" in scheme else f" (for the file {url}: sqlite:///{url})"
        raise YolotuneError(
            f"cannot open storage '{url}': {reason[:200]}; use an SQLAlchemy URL (sqlite:///path.db, "
            f"postgresql+psycopg://user@host/db) or journal:/path/file.log{bare}"
        ) from exc


def _missing_file(url: str) -> Path | None:
    """The file a SQLite or journal URL names, when it does not exist (other URLs: ``None``)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
    elif url.startswith("sqlite:///"):
        from sqlalchemy.engine import make_url

        try:
            database = make_url(url).database
        except Exception:  # a malformed URL: open_storage says what is wrong with it
            return None
        if not database or database == ":memory:":
            return None
        path = Path(database)
    else:
        return None
    return None if path.exists() else path


def _rdb(url: str, heartbeat_interval: int | None, attempts: int = 5) -> optuna.storages.RDBStorage:
    """An RDB storage; retried when another driver is creating the same schema at that moment."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    grace = 3 * heartbeat_interval if heartbeat_interval is not None else None
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace)
        except (IntegrityError, ProgrammingError):  # two drivers creating the tables at once (PostgreSQL)
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def load_study(
    *, study: str | None = None, storage: str | None = None, root: Path | str = Path("studies")
) -> optuna.Study:
    """Load an existing study for ``show`` / ``report`` / ``export`` / ``dashboard``.

    Args:
        study: Study name. May be left out when the storage (or ``root``) holds exactly one study.
        storage: Optuna storage URL (default: the study's SQLite file under ``root``).
        root: Studies directory of the default storage.

    Raises:
        YolotuneError: No such study, or several and no name given.
    """
    root = Path(root)
    if storage is None and study is None:
        found = sorted(p.stem for p in root.glob("*.db"))
        if not found:
            where = f"{root}/" if root.is_dir() else f"{root} (no such folder)"
            if any((root / "studies").glob("*.db")):  # --root names the studies folder, not the project's
                raise YolotuneError(
                    f"no study in {where}; {root / 'studies'}/ holds some: pass --root {root / 'studies'}"
                )
            raise YolotuneError(f"no study in {where}: run `tune run` first, or pass --root or --storage")
        if len(found) > 1:
            raise YolotuneError(f"{len(found)} studies in {root}/ ({', '.join(found)}); pass --study NAME")
        study = found[0]
    if storage is None:
        assert study is not None
        if not (root / f"{study}.db").is_file():
            held = sorted(p.stem for p in root.glob("*.db"))
            if held:
                import difflib

                near = [h for h in held if h.lower() == study.lower()] or difflib.get_close_matches(study, held, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                raise YolotuneError(f"no study '{study}' in {root}/ (it holds {', '.join(held)}){hint}")
            raise YolotuneError(
                f"no study '{study}' in {root}/ (run `tune run --study {shlex.quote(study)}` first, or pass --root)"
            )
        storage = default_storage_url(root, study)
    elif (missing := _missing_file(storage)) is not None:  # opening would create an empty one
        hint = ""
        if not missing.is_absolute() and (Path("/") / missing).is_file():  # sqlite:///tmp/x.db meant /tmp/x.db
            fix = f"journal:/{missing}" if storage.startswith("journal:") else f"four slashes: sqlite:////{missing}"
            hint = f" (for /{missing}, an absolute path, write {fix})"
        raise YolotuneError(f"storage file {missing} does not exist{hint}; check --storage (or run `tune run` first)")
    opened = open_storage(storage)
    if study is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False)]
        if not names:
            raise YolotuneError(f"no study in {storage}: run `tune run --storage {storage}` first")
        if len(names) > 1:
            raise YolotuneError(f"{len(names)} studies in {storage} ({', '.join(names)}); pass --study NAME")
        study = names[0]
    try:
        return optuna.load_study(study_name=study, storage=opened)
    except KeyError as exc:
        raise YolotuneError(f"no study '{study}' in {storage}") from exc


#: The user attribute a trial records the process of the driver running it in (``_env.process_tag``).
DRIVER_ATTR = "driver"


#: The folder, in a study's folder of trial files, where each search running there leaves a file (``searching``).
SEARCHES_DIR = ".searches"


#: What a mark (``searching``) says its process does with the study, and the command to stop.
_USES = {"search": ("searched", "tune run"), "retime": ("re-timed", "tune retime")}


@contextlib.contextmanager
def searching(folder: Path, *, use: str = "search") -> Iterator[None]:
    """Mark ``folder`` (a study's trial files) as used by this process until the block ends.

    The mark is a file naming this process (``_env.process_tag``) in ``folder/.searches``; it
    covers the whole search, the sensitivity scan and the final re-timing included, when no trial is
    RUNNING (``use="search"``), or a ``tune retime`` (``use="retime"``). A mark left by a process
    killed with ``kill -9`` names a gone process and counts for nothing (``live_searches`` removes it).
    """
    marks = folder / SEARCHES_DIR
    marks.mkdir(parents=True, exist_ok=True)
    tag = {**process_tag(), "use": use}
    mark = marks / f"{owner_name()}.{tag['pid_ns'] or 'ns'}.json"  # containers sharing a host name: own pids
    try:
        with whole_file(mark) as partial:  # read whole or not at all: a half-written mark named no one
            partial.write_text(json.dumps(tag) + "\n")
        yield
    finally:
        mark.unlink(missing_ok=True)


def live_searches(folder: Path) -> list[dict[str, Any]]:
    """The other processes of this host marked as searching ``folder`` (``searching``) that still run.

    Marks of processes that are gone are removed; those of another host are not judged.
    """
    live = []
    for mark in sorted((folder / SEARCHES_DIR).glob("*.json")):
        try:
            tag = json.loads(mark.read_text())
        except (OSError, ValueError):  # removed meanwhile
            continue
        if tag_alive(tag):
            live.append(tag)
        elif tag_gone(tag):
            mark.unlink(missing_ok=True)
    return live


def refuse_if_searched(study: optuna.Study, *, doing: str, folder: Path | None = None) -> None:
    """Refuse to ``doing`` a study while a search or a re-timing on this host uses it (its process is alive).

    Args:
        study: The study.
        doing: What the caller was about to do, for the message ("delete").
        folder: The study's folder of trial files the caller found (``study_folder``), whose marks
            (``searching``) are read as well as those of the folder the study recorded.

    Raises:
        YolotuneError: A live process of this host searches the study: it marked one of its folders
            (``searching``), or it is the driver (``DRIVER_ATTR``) of one of its RUNNING trials.
    """
    stop = f"stop that `tune run` first (Ctrl-C), then {doing}"
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if tag_alive(driver := t.user_attrs.get(DRIVER_ATTR)):
            raise YolotuneError(
                f"study '{study.study_name}' is being searched: trial {t.number} runs in process "
                f"{tag_pid(driver)} on this host; {stop}"
            )
    for searched in {f.resolve() for f in (folder, recorded_folder(study)) if f is not None}:
        if live := live_searches(searched):
            done, command = _USES.get(str(live[0].get("use")), _USES["search"])
            raise YolotuneError(
                f"study '{study.study_name}' is being {done} by process {tag_pid(live[0])} on this host; stop that "
                f"`{command}` first (Ctrl-C), then {doing}"
            )


def delete_study(*, study: str, storage: str | None = None, root: Path | str = Path("studies")) -> list[Path]:
    """Delete a study: its trials, its folder of trial files and artifacts, and its SQLite file when empty.

    Args:
        study: The study's name (never guessed: deleting needs it spelt out).
        storage: Its storage URL (default: the study's SQLite file under ``root``).
        root: Studies directory of the default storage and of trial files.

    Returns:
        The files and folders removed.

    Raises:
        YolotuneError: No such study, or a search on this host is running one of its trials.
    """
    root = Path(root)
    found = load_study(study=study, storage=storage, root=root)  # says what is there when the name is wrong
    folder = study_folder(found, root, default_storage=storage is None)
    url = storage or default_storage_url(root, study)
    with storage_lock(url):  # a search marks its folder under this lock: none starts between check and deletion
        refuse_if_searched(found, doing="delete", folder=folder)
        db = root / f"{study}.db"
        emptied = storage is None and optuna.get_all_study_names(storage=open_storage(url)) == [found.study_name]
        removed: list[Path] = []
        if folder is not None:  # first: on a full disk, the database needs the space to write a deletion
            shutil.rmtree(folder)
            removed.append(folder)
        if emptied:
            db.unlink(missing_ok=True)  # the default file held this study only: nothing to write in it
            removed.append(db)
        else:
            optuna.delete_study(study_name=found.study_name, storage=open_storage(url))
    if emptied:
        Path(f"{db}.lock").unlink(missing_ok=True)
    return removed
