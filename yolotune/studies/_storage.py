"""Where studies live: a SQLite file per study under ``studies/`` by default, or any Optuna URL."""

from __future__ import annotations

from pathlib import Path

import optuna

from yolotune.errors import YolotuneError

__all__ = ["default_storage_url", "open_storage", "study_dir"]


def study_dir(root: Path, study_name: str) -> Path:
    """Directory of a study's artifacts (``<root>/<study>``)."""
    return root / study_name


def default_storage_url(root: Path, study_name: str) -> str:
    """SQLite URL of the default per-study file ``<root>/<study>.db``."""
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / f'{study_name}.db').resolve()}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open an Optuna storage URL (RDB via SQLAlchemy, or ``journal:<file>``).

    Raises:
        YolotuneError: The URL cannot be opened; one line with the reason.
    """
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        return optuna.storages.RDBStorage(url)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise YolotuneError(f"cannot open storage '{url}': {reason[:200]}") from exc
