"""``tune agent``: the device side of a remote target. Receives ONNX files, times them, answers JSON.

It is a network service that executes what it is sent, so:

* a token (``Authorization: Bearer``) is required unless it listens on loopback only;
* uploads are size-limited (``413`` before the body is read) and only ONNX is accepted: the body
  is parsed as an ONNX protobuf and checked with ``onnx.checker`` (never unpickled);
* each benchmark runs in a fresh child process with a time limit (killed when over it), so a
  runtime crash or hang costs one request, not the agent; when the agent stops (SIGTERM, Ctrl-C,
  any end of its serve loop) it ends the benchmark it runs, so no orphan times beside its successor;
* benchmarks queue (first come, first served): one timing at a time, so timings never overlap;
* every error is a status code and ``{"error": "<one line>"}``; the agent keeps serving.

Endpoints: ``GET /v1/info`` (device, runtime, versions, power mode, pinned clocks) and
``POST /v1/benchmark?imgsz=N[&threads=T]`` with the ONNX file as the body.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from yolotune.errors import YolotuneError
from yolotune.evaluators._spec import MAX_IMGSZ, RUNTIME_PRECISIONS

__all__ = ["API", "AgentConfig", "AgentServer", "read_token", "runtime_precisions"]

#: Path prefix of the agent's API (its version).
API = "/v1"
_RUNTIME_PRECISIONS = {k: RUNTIME_PRECISIONS[k] for k in ("onnxruntime", "tensorrt")}  # what an agent runs


def runtime_precisions(runtime: str) -> tuple[str, ...]:
    """Precisions an agent with ``runtime`` runs."""
    return _RUNTIME_PRECISIONS[runtime]


logger = logging.getLogger(__name__)


def read_token(path: str | Path, *, create: bool = False) -> str:
    """Read a token file (first line); with ``create``, write a new random token when it is missing.

    Raises:
        YolotuneError: Missing or empty file.
    """
    p = Path(path)
    if p.exists() and not p.is_file():
        raise YolotuneError(f"token file {p} is a directory, not a file")
    if not p.is_file() and create:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private from the start; never overwrite
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    if not p.is_file():
        raise YolotuneError(f"token file {p} not found")
    try:
        words = p.read_text(encoding="utf-8").split()
    except UnicodeDecodeError:
        raise YolotuneError(f"token file {p} is not text: a token is one line (`tune agent` writes one)") from None
    except OSError as exc:
        raise YolotuneError(f"token file {p} cannot be read: {exc.strerror or exc}") from None
    token = words[0] if words else ""
    if not token:
        raise YolotuneError(f"token file {p} is empty")
    return token


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """How the agent serves.

    Attributes:
        host: Address to bind.
        port: Port (0: any free port).
        token: Bearer token requests must carry (required unless ``host`` is loopback).
        runtime: ``onnxruntime`` (CPU boards) or ``tensorrt`` (Jetson, via trtexec).
        max_upload_bytes: Largest ONNX file accepted.
        timeout_s: Longest one benchmark (engine build included) may take.
        cache_dir: Where received models and built engines are kept, by content hash.
        threads: Default intra-op threads of CPU runtimes (``None``: every core).
        max_cache_bytes: Received models and built engines kept at most; the least recently used
            go first (a search sends a new file per candidate: an SD card would fill up).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    runtime: str = "onnxruntime"
    max_upload_bytes: int = 256 * 2**20
    timeout_s: float = 900.0
    cache_dir: Path | None = None
    threads: int | None = None
    max_cache_bytes: int = 2 * 2**30

    def __post_init__(self) -> None:
        if self.runtime not in _RUNTIME_PRECISIONS:
            raise YolotuneError(f"agent runtime must be one of {', '.join(_RUNTIME_PRECISIONS)}; got '{self.runtime}'")
        if not 0 <= self.port <= 65535:
            raise YolotuneError(f"--port must be 0-65535 (0: any free port); got {self.port}")
        limits = {
            "threads": self.threads,
            "timeout": self.timeout_s,
            "max-upload-mb": self.max_upload_bytes / 2**20,
            "cache-mb": self.max_cache_bytes / 2**20,
        }
        for name, value in limits.items():
            if value is not None and value <= 0:
                raise YolotuneError(f"--{name} must be positive; got {value:g}")
        if self.threads is not None and self.runtime == "onnxruntime":
            from yolotune.evaluators._local_cpu import available_cpus

            if self.threads > (cpus := available_cpus()):
                raise YolotuneError(
                    f"--threads {self.threads} is more than the {cpus} CPUs this machine gives the agent: every "
                    f"timing would fail; pass --threads {cpus} or fewer"
                )
        try:
            socket.getaddrinfo(self.host, None)
        except (OSError, UnicodeError) as exc:
            raise YolotuneError(f"cannot listen on {self.host}: {getattr(exc, 'strerror', None) or exc}") from None
        if self.token and len(self.token) < 16 and not _is_loopback(self.host):
            logger.warning(
                "the token is %d characters long and the agent runs what it is sent: use a longer one "
                "(delete the token file and `tune agent --token-file F` writes a random one)",
                len(self.token),
            )
        if not self.token and not _is_loopback(self.host):
            raise YolotuneError(
                f"the agent runs what it is sent: pass --token-file F to listen on {self.host}, "
                "or bind --host 127.0.0.1"
            )


class _Fifo:
    """First come, first served: one holder at a time, in arrival order."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._next = 0
        self._serving = 0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        with self._cv:
            mine = self._next
            self._next += 1
            self._cv.wait_for(lambda: self._serving == mine)
        try:
            yield
        finally:
            with self._cv:
                self._serving += 1
                self._cv.notify_all()


def over_limit(size: int, limit: int) -> str:
    """Why a model of ``size`` bytes is refused by an agent taking ``limit``, and the setting that lets it through."""
    return (
        f"model is {size / 2**20:.1f} MiB, over the agent's {limit / 2**20:.0f} MiB limit: restart `tune agent` with "
        f"--max-upload-mb {-(-size // 2**20)} or more (the FP32 reference is the largest file a search sends)"
    )


def _client_gone(req: BaseHTTPRequestHandler) -> bool:
    """Whether the client of a request whose body was read has closed its connection (nothing left to answer)."""
    sock = req.connection
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset, or closed here
        return True


def _bench_child(runtime: str, model: str, imgsz: int, threads: int | None, cache: str) -> dict[str, Any]:
    """Time ``model`` with ``runtime`` (runs in the child process, ``python -m yolotune.evaluators._agent``)."""
    from yolotune.evaluators._spec import TargetSpec
    from yolotune.evaluators._target import get_target

    spec = TargetSpec(name=f"agent-{runtime}", runtime=runtime, precisions=runtime_precisions(runtime), threads=threads)
    target = get_target(spec)
    if runtime == "tensorrt":
        target.cache_dir = Path(cache) / "engines"  # type: ignore[attr-defined]
    target.check()
    latency = target.benchmark(Path(model), imgsz=imgsz)
    return {"latency": latency.to_dict(), "provenance": target.provenance(imgsz=imgsz).to_dict()}


#: Seconds a benchmark process has to exit after SIGTERM before it is killed.
_GRACE_S = 3.0


def _end(child: subprocess.Popen[str], grace_s: float = _GRACE_S) -> None:
    """End a benchmark process and what it started (trtexec): its group gets SIGTERM, SIGKILL after ``grace_s``.

    The process is reaped before this returns.
    """

    def signal_group(signum: int) -> None:
        if child.returncode is None:  # not reaped: its pid (the group's id) is not reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signum)

    signal_group(signal.SIGTERM)
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    finally:  # a second Ctrl-C while it waits still ends it
        signal_group(signal.SIGKILL)
        child.wait()


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AgentServer:
    """The agent: an HTTP server that benchmarks ONNX files one at a time.

    Use ``serve_forever()`` (the CLI), or ``start()`` / ``stop()`` to run it in a thread (tests).
    """

    def __init__(self, *, config: AgentConfig) -> None:
        from yolotune._env import workspace_dir

        self.config = config
        if config.runtime == "tensorrt":  # refuse to start rather than fail every request
            from yolotune.evaluators._tensorrt import TensorRTTarget

            TensorRTTarget().check()
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else workspace_dir() / "agent"
        (self.cache_dir / "models").mkdir(parents=True, exist_ok=True)
        import filelock

        # one agent per cache folder: another's trimming, or its start's clean-up, would delete models in use
        self._owner = filelock.FileLock(self.cache_dir / "agent.lock", thread_local=False)  # stop() may run elsewhere
        try:
            self._owner.acquire(timeout=0)
        except filelock.Timeout:
            raise YolotuneError(
                f"another `tune agent` uses the cache folder {self.cache_dir}: stop it, or give this one a folder of "
                "its own (--cache-dir DIR)"
            ) from None
        self._queue = _Fifo()
        self._uploads = threading.Semaphore(1)  # one upload read and checked at a time: bounded memory
        self._cache_lock = threading.Lock()
        self._in_use: Counter[Path] = Counter()  # models requests hold, from upload to the end of their timing
        for left in (self.cache_dir / "models").glob("upload.*.tmp"):  # a killed agent's partial uploads
            left.unlink(missing_ok=True)
        self._children: set[subprocess.Popen[str]] = set()  # benchmark processes running
        self._children_lock = threading.Lock()
        self._stopping = False
        self.info = self._describe()
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 120  # seconds to receive a request

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def do_GET(self) -> None:
                agent._dispatch(self, "GET")

            def do_POST(self) -> None:
                agent._dispatch(self, "POST")

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                # http.server's own refusals (another method, a broken request line): JSON like every answer
                self.close_connection = True
                answers = f"the agent answers GET {API}/info and POST {API}/benchmark"
                agent._reply(self, code, {"error": f"{message or HTTPStatus(code).phrase}; {answers}"})

        try:
            self._server = ThreadingHTTPServer((config.host, config.port), Handler)
        except OSError as exc:
            self._owner.release()
            raise YolotuneError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL the agent answers on."""
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}"

    def _describe(self) -> dict[str, Any]:
        from yolotune import __version__
        from yolotune.evaluators._device import device_info

        info: dict[str, Any] = {"agent": __version__, "runtime": self.config.runtime, **device_info()}
        info["precisions"] = list(runtime_precisions(self.config.runtime))
        info["max_upload_bytes"] = self.config.max_upload_bytes
        info["timeout_s"] = self.config.timeout_s
        info["max_imgsz"] = MAX_IMGSZ
        if self.config.runtime == "onnxruntime":
            import onnxruntime

            from yolotune.evaluators._local_cpu import available_cpus

            info["cpus"] = available_cpus()  # the most threads a target may ask this agent for

            info["runtime_version"] = onnxruntime.__version__
        else:
            from yolotune.evaluators._tensorrt import TensorRTTarget

            info["runtime_version"] = TensorRTTarget()._version()
        return info

    # -- serving -------------------------------------------------------------------------------

    def serve_forever(
        self, on_ready: Callable[[str], None] | None = None, on_poll: Callable[[], None] | None = None
    ) -> None:
        """Serve until interrupted; ``on_poll`` is called between requests (it may raise KeyboardInterrupt)."""
        if on_poll is not None:
            self._server.service_actions = on_poll  # type: ignore[method-assign]
        if on_ready:
            on_ready(self.url)
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            try:
                self._end_children()
            finally:
                self._server.server_close()
                self._owner.release()

    def start(self) -> AgentServer:
        """Serve in a background thread; return self."""
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end the benchmark in progress, and close the socket."""
        self._server.shutdown()
        self._end_children()
        self._server.server_close()
        self._owner.release()  # the folder is free once nothing answers: an agent started now may take it
        if self._thread:
            self._thread.join(timeout=10)

    def _end_children(self) -> None:
        """Start no more benchmarks; end (and reap) those running, so none outlives the agent."""
        with self._children_lock:
            self._stopping = True
            children = list(self._children)
        for child in children:
            _end(child)

    # -- requests ------------------------------------------------------------------------------

    def _dispatch(self, req: BaseHTTPRequestHandler, method: str) -> None:
        try:
            self._authorize(req)
            path, _, query = req.path.partition("?")
            if method == "GET" and path == f"{API}/info":
                return self._reply(req, 200, self.info)
            if method == "POST" and path == f"{API}/benchmark":
                return self._reply(req, 200, self._benchmark(req, urllib.parse.parse_qs(query)))
            raise _HTTPError(404, f"no {method} {path}; the agent answers GET {API}/info and POST {API}/benchmark")
        except _HTTPError as exc:
            self._reply(req, exc.status, {"error": str(exc)})
        except Exception as exc:  # the agent keeps serving whatever happens in one request
            self._reply(
                req, 500, {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
            )

    def _authorize(self, req: BaseHTTPRequestHandler) -> None:
        if not self.config.token:
            return
        scheme, _, given = req.headers.get("Authorization", "").strip().partition(" ")
        # the scheme's case does not matter (RFC 7235); the token is compared in constant time
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.config.token.encode()):
            req.close_connection = True  # do not read what an unauthorised client sends
            raise _HTTPError(
                401,
                "missing or wrong token: --device-token-file must hold the token of the agent's --token-file",
            )

    def _reply(self, req: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        with contextlib.suppress(OSError):
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(data)))
            if req.close_connection:
                req.send_header("Connection", "close")
            req.end_headers()
            req.wfile.write(data)

    def _read_model(self, req: BaseHTTPRequestHandler) -> Path:
        length = req.headers.get("Content-Length")
        if length is None or not length.isdigit():
            req.close_connection = True
            raise _HTTPError(411, "send the ONNX file as the body, with a Content-Length")
        size = int(length)
        limit = self.config.max_upload_bytes
        if size > limit:
            req.close_connection = True  # the body is not read
            raise _HTTPError(413, over_limit(size, limit))
        models = self.cache_dir / "models"
        tmp = models / f"upload.{threading.get_ident()}.tmp"
        try:
            # streamed to disk while hashed, a MiB at a time: a client that sends slowly holds up no other upload
            digest = hashlib.sha256()
            got = 0
            with tmp.open("wb") as out:
                while got < size:
                    chunk = req.rfile.read(min(2**20, size - got))
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    got += len(chunk)
            if got != size:
                req.close_connection = True
                raise _HTTPError(400, f"upload cut short: {got} of {size} bytes")
            path = models / f"{digest.hexdigest()}.onnx"
            with self._uploads:  # one model checked at a time: loading it is what takes memory
                with self._cache_lock:  # held from here: the trimming never takes it
                    known = path.is_file()
                    if known:
                        path.touch()  # recently used: the last the cache lets go
                        self._in_use[path] += 1
                if not known:
                    _check_onnx(tmp)
                    with self._cache_lock:
                        tmp.replace(path)
                        self._in_use[path] += 1
        finally:  # a reset connection or a full disk leaves no partial upload behind
            tmp.unlink(missing_ok=True)
        self._trim_cache()
        return path

    def _trim_cache(self) -> None:
        """Delete the least recently used models and engines until the cache fits ``max_cache_bytes``.

        Only the agent's own files count (``models/<sha256>.onnx``, ``engines/<hash>.engine``), so a
        ``--cache-dir`` shared with other files never loses them; a model a request holds (queued or
        timing) and engines used within the last ``timeout_s`` are kept.
        """
        with self._cache_lock:
            files = [*self.cache_dir.glob("models/*.onnx"), *self.cache_dir.glob("engines/*.engine")]
            files = [p for p in files if _CACHED.fullmatch(p.name)]
            files.sort(key=lambda p: p.stat().st_mtime)
            total = sum(p.stat().st_size for p in files)
            recent = time.time() - self.config.timeout_s
            for old in files:
                if total <= self.config.max_cache_bytes:
                    break
                # an engine is used by the model's timing: kept while one could still be running
                if self._in_use[old] > 0 or (old.suffix == ".engine" and old.stat().st_mtime > recent):
                    continue
                total -= old.stat().st_size
                old.unlink(missing_ok=True)

    def _benchmark(self, req: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> dict[str, Any]:
        try:
            imgsz = int(query.get("imgsz", ["0"])[0])
            threads_q = query.get("threads", [""])[0]
            threads = int(threads_q) if threads_q else self.config.threads
        except ValueError:
            raise _HTTPError(400, "imgsz and threads must be integers") from None
        if not 32 <= imgsz <= MAX_IMGSZ or (threads is not None and threads < 1):
            raise _HTTPError(400, f"pass ?imgsz=N (32 ≤ N ≤ {MAX_IMGSZ}) and, optionally, threads ≥ 1")
        model = self._read_model(req)
        try:
            queued = time.time()
            with self._queue.turn():
                if _client_gone(req):  # stopped waiting (Ctrl-C, its own timeout): the next request goes first
                    req.close_connection = True
                    raise _HTTPError(400, "the client went away before its turn: not timed")
                started = time.time()
                answer = self._run_child(model, imgsz=imgsz, threads=threads)
        finally:
            with self._cache_lock:
                self._in_use[model] -= 1  # kept while any request that sent it waits
                if self._in_use[model] <= 0:
                    del self._in_use[model]
        # the device in every answer: a client whose agent was replaced at the same address sees it at once
        device = {"device": self.info.get("device"), "host": self.info.get("host")}
        return {**answer, **device, "queued_s": started - queued, "model_sha256": model.stem}

    def _run_child(self, model: Path, *, imgsz: int, threads: int | None) -> dict[str, Any]:
        """Benchmark in a fresh interpreter with a time limit: a crash or hang costs one request."""
        args = json.dumps([self.config.runtime, str(model), imgsz, threads, str(self.cache_dir)])
        with self._children_lock:  # registered before a stop can look, or not started at all
            if self._stopping:
                raise _HTTPError(503, "the agent is stopping")
            # its own process group: the agent ends it (and what it starts) when it stops, and a
            # Ctrl-C at the agent's terminal reaches the agent, which does so
            child = subprocess.Popen(
                [sys.executable, "-m", "yolotune.evaluators._agent", args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            self._children.add(child)
        try:
            try:
                stdout, stderr = child.communicate(timeout=self.config.timeout_s)
            except subprocess.TimeoutExpired:
                _end(child, grace_s=0)
                raise _HTTPError(504, f"benchmark exceeded the agent's {self.config.timeout_s:g} s limit") from None
            finally:
                _end(child)  # already exited: reaped; or interrupted: ended
        finally:
            with self._children_lock:
                self._children.discard(child)
        if self._stopping:
            raise _HTTPError(503, "the agent stopped during the benchmark")
        done = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
        lines = done.stdout.strip().splitlines()
        try:
            answer = json.loads(lines[-1]) if lines else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
            raise _HTTPError(500, f"benchmark process died (exit code {done.returncode}): {tail}")
        if "error" in answer:
            raise _HTTPError(422, f"benchmark failed: {answer['error']}")
        return answer


#: The names of the agent's own cached files: a model by its sha256, an engine by its build hash.
_CACHED = re.compile(r"[0-9a-f]{64}\.onnx|[0-9a-f]{32}\.engine")


def _check_onnx(path: Path) -> None:
    """Accept only a well-formed ONNX model with one float image input."""
    import onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise _HTTPError(400, f"not an ONNX model ({type(exc).__name__})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise _HTTPError(400, f"invalid ONNX model: {str(exc).splitlines()[0][:200]}") from None
    if len(model.graph.input) != 1:
        raise _HTTPError(400, f"expected one image input; the model has {len(model.graph.input)}")


def _main() -> None:
    """Child entry point: one benchmark, its answer as one JSON line on stdout."""
    runtime, model, imgsz, threads, cache = json.loads(sys.argv[1])
    try:
        answer = _bench_child(runtime, model, imgsz, threads, cache)
    except Exception as exc:
        from yolotune.errors import StepError

        text = exc.reason if isinstance(exc, StepError) else str(exc)
        answer = {"error": text.splitlines()[0][:300] if text else type(exc).__name__}
    sys.stdout.write("\n" + json.dumps(answer) + "\n")


if __name__ == "__main__":
    _main()
