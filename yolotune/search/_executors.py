"""Where candidates are built: in the driver's process, or as Ray tasks on a local or remote cluster.

The driver asks trials and tells results; an executor only builds (prune, fine-tune, export,
quantize, validate). Timing is never done here: the driver times every built candidate on the
target host (``time_candidate``), holding the host's timing lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from yolotune.errors import YolotuneError, out_of_memory
from yolotune.search._candidate import BuiltCandidate, build_candidate

__all__ = ["Build", "Crashed", "Failed", "InProcess", "RayExecutor", "check_ray_address"]

#: Environment a worker needs to find what the driver found.
_FORWARDED_ENV = ("YOLOTUNE_ASSETS", "YOLOTUNE_TMP", "YOLOTUNE_CALIB_MEMORY_GB")


@dataclass(frozen=True)
class Failed:
    """The candidate failed for a reason that would repeat (bad plan, failing step)."""

    reason: str


@dataclass(frozen=True)
class Crashed:
    """The process building the candidate died (killed, out of memory): worth one retry."""

    reason: str


Build = BuiltCandidate | Failed | Crashed


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # a RayTaskError: its first line is Ray's header, the error is its cause
    if isinstance(cause, BaseException) and type(exc).__name__.startswith("RayTaskError"):
        exc = cause
    if isinstance(exc, YolotuneError):
        return str(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"unexpected {type(exc).__name__}: {first}"


def failure(exc: BaseException) -> Failed | Crashed:
    """What a candidate's exception means for its plan.

    A failed allocation says the host was short of memory then (another worker's candidate, a
    calibration, another program), not that the plan is wrong: it is worth one retry, as a worker
    that died is. Any other error would repeat.
    """
    if out_of_memory(exc):
        return Crashed(f"out of memory: {_reason(exc)}")
    return Failed(_reason(exc))


def _build(kwargs: dict[str, Any], driver_host: str) -> tuple[BuiltCandidate | Failed | Crashed, bytes | None]:
    """Build one candidate (runs in a worker). Failures come back as values, never as exceptions."""
    out = Path(kwargs["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "worker.pid").write_text(str(os.getpid()))
    try:
        built = build_candidate(**kwargs)
    except Exception as exc:
        return failure(exc), None
    remote = socket.gethostname() != driver_host
    return built, (built.deployable.read_bytes() if remote else None)


def _forwarded_env() -> dict[str, str]:
    """The environment variables of yolotune that Ray workers need (assets, scratch, calibration memory)."""
    return {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}


def _local_ray_dir(temp_dir: Path) -> Path:
    """Prepare a local Ray instance's temporary directory under ``temp_dir`` (the study's).

    Ray puts Unix sockets in it, whose paths may not exceed 107 bytes, so Ray is given a short
    symlink in the system temp dir that points into the study directory. Token authentication
    stays on, with the token in yolotune's per-user scratch directory rather than ``~/.ray``.
    """
    import hashlib
    import secrets
    import tempfile

    temp_dir.mkdir(parents=True, exist_ok=True)
    real = temp_dir.resolve()
    links = Path(tempfile.gettempdir())
    for stale in links.glob("yolotune-ray-*"):  # of studies deleted since (a killed run cannot remove its own)
        with contextlib.suppress(OSError):  # another user's, or removed meanwhile
            if stale.is_symlink() and not stale.exists() and stale.lstat().st_uid == os.getuid():
                stale.unlink()
    link = links / f"yolotune-ray-{hashlib.sha1(str(real).encode()).hexdigest()[:10]}"
    if link.is_symlink() and link.resolve() != real:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(real, target_is_directory=True)
    if os.environ.get("RAY_AUTH_MODE", "token") == "token":
        from yolotune._env import workspace_dir

        token = workspace_dir() / "ray_auth_token"  # one per user: Ray caches the token per process
        if not token.exists():
            token.touch(mode=0o600)
            token.write_text(secrets.token_hex(32))
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    return link


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` Ray address nothing listens on (``ray.init`` would wait for minutes)."""
    if address in ("auto", "local") or address.startswith(("ray://", "http://", "https://")):
        return  # left to Ray
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise YolotuneError(
            f"--ray-address must be HOST:PORT, ray://HOST:PORT or auto; got {address!r} (or leave it out: local Ray)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise YolotuneError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); "
            "start one there with `ray start --head --port PORT` or leave out --ray-address"
        ) from None


class InProcess:
    """Builds one candidate at a time in the driver's own process."""

    workers = 1

    def __init__(self) -> None:
        self._queue: list[tuple[Any, dict[str, Any]]] = []

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.clear()

    @property
    def in_flight(self) -> int:
        """Candidates submitted and not yet collected."""
        return len(self._queue)

    def submit(self, key: Any, kwargs: dict[str, Any]) -> None:
        """Queue a build."""
        self._queue.append((key, kwargs))

    def wait(self) -> list[tuple[Any, Build]]:
        """Build the oldest queued candidate now and return it."""
        key, kwargs = self._queue.pop(0)
        try:
            return [(key, build_candidate(**kwargs))]
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # never let one candidate take the search down
            return [(key, failure(exc))]

    def cancel_all(self) -> list[Any]:
        """Drop queued builds; return their keys."""
        keys = [k for k, _ in self._queue]
        self._queue.clear()
        return keys


class RayExecutor:
    """Builds up to ``workers`` candidates at once as Ray tasks.

    ``address=None`` starts a local Ray instance sized to this machine, with its temporary files
    in ``temp_dir`` (nothing in the home directory); otherwise joins the cluster at ``address``.
    A program that called ``ray.init()`` itself keeps its Ray: the tasks run there (with
    yolotune's environment variables as their runtime environment) and it is left running.
    Each task declares ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs (one when candidates
    fine-tune on CUDA); asking for more than the cluster has is an error.
    """

    def __init__(
        self,
        *,
        workers: int,
        temp_dir: Path,
        address: str | None = None,
        cpus_per_worker: int = 1,
        gpus_per_worker: int = 0,
    ) -> None:
        if workers < 1 or cpus_per_worker < 1:
            raise YolotuneError(f"--workers must be ≥1 (got {workers}) with ≥1 CPU each (got {cpus_per_worker})")
        self.workers = workers
        self._address = address
        self._temp_dir = temp_dir
        self._cpus = cpus_per_worker
        self._gpus = gpus_per_worker
        self._refs: dict[Any, Any] = {}
        self._started = False
        self._remote: Any = None

    def __enter__(self) -> RayExecutor:
        caller = sys.modules.get("ray")
        if caller is not None and caller.is_initialized():
            return self._join_callers_ray(caller)
        # the local instance's directory and token must be set before Ray is imported (it caches them)
        local_dir = _local_ray_dir(self._temp_dir) if self._address is None else None
        if self._address is not None:
            check_ray_address(self._address)
        import ray

        env = _forwarded_env()
        common: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "configure_logging": False,
        }
        # ray.init replaces the SIGTERM handler with sys.exit (a SystemExit mid-step, then Ray's core
        # dumps and aborts): the caller's handler, the CLI's clean stop, is put back
        sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        try:
            if self._address is None:
                ray.init(num_cpus=os.cpu_count() or 1, _temp_dir=str(local_dir), **common)
            else:
                ray.init(address=self._address, runtime_env={"env_vars": env}, **common)
        except Exception as exc:
            where = self._address or "a local instance"
            raise YolotuneError(f"cannot start Ray ({where}): {_reason(exc)}") from exc
        finally:
            if sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
        self._started = True
        self._check_resources(ray)
        self._remote = ray.remote(num_cpus=self._cpus, num_gpus=self._gpus, max_retries=0)(_build)
        return self

    def _join_callers_ray(self, ray: Any) -> RayExecutor:
        """Run the tasks on the Ray this process already initialized, and leave it running."""
        if self._address is not None:
            raise YolotuneError(
                f"this program already called ray.init(); leave out --ray-address ({self._address}) to use that Ray, "
                "or call ray.shutdown() first"
            )
        self._check_resources(ray)
        options = {"num_cpus": self._cpus, "num_gpus": self._gpus, "max_retries": 0}
        self._remote = ray.remote(**options, runtime_env={"env_vars": _forwarded_env()})(_build)
        return self

    def _check_resources(self, ray: Any) -> None:
        total = float(ray.cluster_resources().get("CPU", 0))
        if self.workers * self._cpus > total:
            self.__exit__()
            raise YolotuneError(
                f"--workers {self.workers} needs {self.workers * self._cpus} CPUs; the Ray cluster has {total:g} "
                "(use fewer workers or a larger cluster)"
            )
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if self.workers * self._gpus > gpus:
            self.__exit__()
            raise YolotuneError(
                f"--workers {self.workers} fine-tuning on CUDA needs {self.workers * self._gpus} GPUs; the Ray "
                f"cluster has {gpus:g} (use fewer workers, a cluster with GPUs, or --train-device cpu)"
            )

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._started:
            ray.shutdown()
            self._started = False

    @property
    def in_flight(self) -> int:
        """Candidates submitted and not yet collected."""
        return len(self._refs)

    def submit(self, key: Any, kwargs: dict[str, Any]) -> None:
        """Start a build task."""
        self._refs[key] = self._remote.remote(kwargs, socket.gethostname())

    def wait(self) -> list[tuple[Any, Build]]:
        """Wait for at least one task; return the finished ones."""
        import ray

        by_ref = {ref: key for key, ref in self._refs.items()}
        ready, _ = ray.wait(list(by_ref), num_returns=1)
        done: list[tuple[Any, Build]] = []
        for ref in ready:
            key = by_ref[ref]
            del self._refs[key]
            done.append((key, self._collect(ref, key)))
        return done

    def _collect(self, ref: Any, key: Any) -> Build:
        import ray

        try:
            built: BuiltCandidate | Failed | Crashed
            payload: bytes | None
            built, payload = ray.get(ref)
        except (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.OutOfMemoryError,
        ) as exc:
            return Crashed(f"worker died while building it ({type(exc).__name__})")
        except ray.exceptions.RayError as exc:
            return Crashed(f"worker failed: {_reason(exc)}")
        if isinstance(built, Failed | Crashed) or payload is None:
            return built
        # built on another host: bring the deployable file, and the plan beside it, to the target host
        local = Path(key.out_dir) / built.deployable.name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(payload)
        built.plan.save(local.parent / "plan.yaml")  # the driver uploads it to the artifact store
        return replace(built, deployable=local)

    def cancel_all(self) -> list[Any]:
        """Cancel running tasks; return their keys."""
        import ray

        keys = list(self._refs)
        for ref in self._refs.values():
            ray.cancel(ref, force=True)
        self._refs.clear()
        return keys
