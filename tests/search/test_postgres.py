"""Several drivers on one study in a real PostgreSQL server (Debian's, a private cluster on 127.0.0.1)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from yolotune.studies import load_study

COMPLETE = optuna.trial.TrialState.COMPLETE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1 (as user postgres when the tests run as root)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql)")
    pytest.importorskip("psycopg")
    bindir = Path(bins[-1])
    root = Path(tempfile.mkdtemp(prefix="yolotune-pg-"))
    run_as: list[str] = []
    if os.getuid() == 0:  # postgres refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*run_as, *args], check=True, capture_output=True, timeout=120)

    pg(str(bindir / "initdb"), "-D", str(data), "-U", "yolotune", "--auth=trust", "-E", "UTF8")
    opts = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://yolotune@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_drivers_share_one_study_and_lose_nothing(postgres_url: str, tmp_path: Path) -> None:
    tune = Path(sys.executable).parent / "tune"
    args = [str(tune), "run", "--data", "coco8", "--imgsz", "160", "--budget", "5", "--study", "pg"]
    args += ["--retime-rounds", "0"]  # re-timing is tested apart
    args += ["--storage", postgres_url, "--root", str(tmp_path)]
    drivers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for d in drivers:
        _, err = d.communicate(timeout=600)
        assert d.returncode == 0, err
    study = load_study(storage=postgres_url)  # the only study in this storage: no name needed
    assert study.study_name == "pg"
    complete = study.get_trials(states=(COMPLETE,))
    # both drivers stop at the budget; a trial each may have been in flight when it was reached
    assert 5 <= len(complete) <= 6
    references = [t.user_attrs.get("reference") for t in complete if t.user_attrs.get("reference")]
    assert sorted(references) == ["fp32", "int8", "seeds"]  # the creator alone queued them
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]
    assert all(Path(t.user_attrs["artifact"]).is_file() for t in complete)
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))


_HOLD = """
import sys, time
from yolotune.studies import storage_lock
with storage_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(url: str, seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", _HOLD, url, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_the_storage_lock_serialises_drivers_and_a_dead_holder_releases_it(postgres_url: str) -> None:
    from yolotune.studies import storage_lock

    child = _holder(postgres_url, 3)
    start = time.monotonic()
    with storage_lock(postgres_url), storage_lock(postgres_url):  # re-entrant within one process
        waited = time.monotonic() - start
    child.wait(timeout=60)
    assert waited > 1.5  # it waited for the other process to let go
    child = _holder(postgres_url, 600)
    child.kill()  # a driver killed while holding the lock: its session ends, and the lock with it
    child.wait(timeout=60)
    start = time.monotonic()
    with storage_lock(postgres_url):
        assert time.monotonic() - start < 30
    # no server: no lock, and the open that follows says what is wrong
    with storage_lock("postgresql+psycopg://yolotune@127.0.0.1:1/postgres"):
        pass
