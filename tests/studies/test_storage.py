from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from yolotune.studies import default_storage_url, storage_lock


def test_a_sqlite_study_file_is_locked_across_processes_and_again_within_one(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path, "s")
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
    start = time.monotonic()
    with storage_lock("journal:/tmp/x.log"):  # other storages have locks of their own
        assert time.monotonic() - start < 0.5
