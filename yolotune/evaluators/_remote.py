"""Targets timed on a device: send the ONNX file to ``tune agent`` and read back its latency."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from yolotune.errors import StepError, YolotuneError
from yolotune.evaluators._agent import API, over_limit
from yolotune.evaluators._base import LatencyStats, Provenance
from yolotune.evaluators._spec import TargetSpec
from yolotune.evaluators._target import Target

__all__ = ["RemoteTarget"]


class _AgentError(Exception):
    pass


def _valid_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when not a number in 0-65535
    except ValueError:
        return False
    plain = parts.path in ("", "/") and not parts.query and not parts.fragment  # the agent's paths are its own
    return parts.scheme == "http" and bool(parts.hostname) and port != 0 and " " not in url and plain


class RemoteTarget(Target):
    """A target whose latency is measured by a device agent (``tune agent``) at ``url``.

    Args:
        spec: The target (its runtime must be the agent's).
        url: Agent base URL, ``http://host:port``.
        token: The agent's token (``None`` for an agent on loopback without one).
        timeout_s: Longest wait for one benchmark answer (queueing and engine build included).
        ping_s: While waiting, ask the agent every ``ping_s`` seconds whether it still answers; an
            agent that stopped answering (frozen, powered off) fails the benchmark then, not after
            ``timeout_s``.
    """

    def __init__(
        self,
        *,
        spec: TargetSpec,
        url: str,
        token: str | None = None,
        timeout_s: float = 1800.0,
        ping_s: float = 60.0,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.precisions = spec.precisions
        self.activations = spec.activations
        self.url = url.rstrip("/")
        if not _valid_url(self.url):
            raise YolotuneError(
                f"--device-url must look like http://HOST:PORT (port 1-65535; plain http, no path: `tune agent` serves "
                f"its own); got '{url}'"
            )
        self.token = token
        self.timeout_s = timeout_s
        self.ping_s = ping_s
        self._info: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None
        self._device: str | None = None  # the device the first check found: every timing must come from it

    def _request(self, path: str, *, data: bytes | None = None, timeout: float) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read())["error"]
            except (ValueError, OSError, TypeError, KeyError):  # not the agent's JSON error
                raise _AgentError(f"{self._not_an_agent} (it answered {exc.code}: {exc.reason})") from None
            if exc.code == 401 and not self.token:
                reason = "it needs its token: pass --device-token-file, a copy of the agent's --token-file"
            raise _AgentError(f"device agent at {self.url} answered {exc.code}: {reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise _AgentError(f"device agent at {self.url} unreachable ({why})") from None
        except http.client.BadStatusLine as exc:  # another protocol on that port (SSH, a database)
            raise _AgentError(f"{self._not_an_agent} (it does not speak HTTP: {str(exc)[:60]!r})") from None
        except http.client.HTTPException as exc:  # an answer broken off (the agent killed while sending it)
            raise _AgentError(f"device agent at {self.url} broke off its answer ({type(exc).__name__})") from None
        except ValueError:  # JSON or the URL itself
            raise _AgentError(f"{self._not_an_agent} (its answer is not JSON)") from None
        if not isinstance(answer, dict):
            raise _AgentError(f"{self._not_an_agent} (its answer is not a JSON object)")
        return answer

    @property
    def _not_an_agent(self) -> str:
        return f"the server at {self.url} is not a `tune agent`; check --device-url's host and port"

    def info(self) -> dict[str, Any]:
        """The agent's description of its device and runtime (fetched once)."""
        if self._info is None:
            self._info = self._request(f"{API}/info", timeout=15)
        return self._info

    def check(self) -> None:
        """Reach the agent and check it runs this target's runtime and precisions.

        Raises:
            YolotuneError: Unreachable agent, wrong token, or a runtime that does not match.
        """
        self._info = None  # ask again: a check during a search asks whether the agent is still there
        try:
            info = self.info()
        except _AgentError as exc:
            if "unreachable" not in str(exc):
                raise YolotuneError(str(exc)) from None
            raise YolotuneError(
                f"{exc}; start `tune agent --host 0.0.0.0 --token-file F` on the device and pass "
                "--device-url http://DEVICE:8765 --device-token-file F"
            ) from None
        if "agent" not in info:
            raise YolotuneError(f"{self._not_an_agent} (its {API}/info names no agent version)")
        device = str(info.get("device", ""))
        if self._device is not None and device != self._device:
            raise YolotuneError(self._replaced(device, self._device))
        self._device = device
        if info.get("runtime") != self.spec.runtime:
            raise YolotuneError(
                f"the agent at {self.url} runs {info.get('runtime')}; target {self.name} needs {self.spec.runtime} "
                f"(start it with `tune agent --runtime {self.spec.runtime}`)"
            )
        missing = [p for p in self.precisions if p not in info.get("precisions", ())]
        if missing:
            raise YolotuneError(f"the agent at {self.url} cannot run {', '.join(missing)} for target {self.name}")
        cpus = info.get("cpus")  # an older agent does not say: its own check refuses each timing
        if self.spec.threads and isinstance(cpus, int) and self.spec.threads > cpus:
            raise YolotuneError(
                f"target {self.name} asks for {self.spec.threads} threads but the device at {self.url} gives its agent "
                f"{cpus} CPUs: every timing would fail; define {self.name} with threads: {cpus} (or null: every CPU) "
                "in a --targets-file"
            )
        # the device's CPU decides whether INT8 weights need 7 bits (an older agent does not say: 8 bits)
        self.reduce_range = self.spec.runtime == "onnxruntime" and info.get("int8_saturates") is True

    def benchmark(self, model_path: Path, *, imgsz: int) -> LatencyStats:
        """Upload ``model_path`` and return the latency the agent measured on its device.

        Raises:
            StepError: The agent refused the model, failed to time it, or could not be reached.
        """
        body = Path(model_path).read_bytes()
        query = f"?imgsz={imgsz}" + (f"&threads={self.spec.threads}" if self.spec.threads else "")
        try:
            limit = int(self.info().get("max_upload_bytes", 0))
            if limit and len(body) > limit:
                raise _AgentError(over_limit(len(body), limit))
            answer = self._watched(f"{API}/benchmark{query}", body)
        except _AgentError as exc:
            if "Broken pipe" in str(exc) or "reset" in str(exc):  # the body refused: the limit may be lower now
                self._info = None
                with contextlib.suppress(_AgentError, TypeError, ValueError):
                    limit = int(self.info().get("max_upload_bytes", 0))
                    if limit and len(body) > limit:
                        raise StepError("latency", over_limit(len(body), limit)) from None
            raise StepError("latency", str(exc)) from None
        if not isinstance(answer.get("latency"), dict):
            raise StepError("latency", f"{self._not_an_agent} of this version (its answer holds no latency)")
        now, was = answer.get("device"), self._device or str(self.info().get("device", ""))
        if now is not None and now != was:  # an older agent does not say: the device its info named
            raise StepError("latency", self._replaced(str(now), was))
        self._last = answer
        fields = {f.name for f in dataclasses.fields(LatencyStats)}
        return LatencyStats(**{k: v for k, v in answer["latency"].items() if k in fields})

    def _watched(self, path: str, body: bytes) -> dict[str, Any]:
        """POST ``body`` and wait for the answer, pinging the agent meanwhile (see ``ping_s``)."""
        outcome: dict[str, Any] = {}

        def post() -> None:
            try:
                outcome["answer"] = self._request(path, data=body, timeout=self.timeout_s)
            except _AgentError as exc:
                outcome["error"] = exc
            except Exception as exc:  # anything else: this thread must not die with a traceback and no answer
                outcome["error"] = _AgentError(f"device agent at {self.url}: unexpected {type(exc).__name__}: {exc}")

        # a daemon thread: one stuck on a dead agent never holds up the process's exit
        poster = threading.Thread(target=post, daemon=True, name="yolotune-benchmark")
        poster.start()
        deadline = time.monotonic() + self.timeout_s
        while True:
            poster.join(timeout=self.ping_s)
            if not poster.is_alive():
                break
            if time.monotonic() > deadline:
                raise _AgentError(f"device agent at {self.url} gave no answer in {self.timeout_s:g} s")
            try:
                self._request(f"{API}/info", timeout=min(15.0, self.ping_s))
            except _AgentError as exc:
                why = str(exc).removeprefix(f"device agent at {self.url} ")
                raise _AgentError(f"device agent at {self.url} stopped answering during the benchmark: {why}") from None
        if "error" in outcome:
            raise outcome["error"]
        return dict(outcome["answer"])

    def _replaced(self, device: str, was: str) -> str:
        """Why timings stop: the agent at this URL now runs on another device than the one first checked."""
        return (
            f"the agent at {self.url} now runs on {device or 'an unnamed device'}, not on {was}, which this run timed "
            "on: its timings would not compare; bring that device back at this address (or start a new --study for "
            "this one)"
        )

    def provenance(self, *, imgsz: int) -> Provenance:
        """The device that measured: the agent's own provenance, under this target's name and URL."""
        info = self.info()
        measured = (self._last or {}).get("provenance", {})
        return Provenance(
            target=self.name,
            runtime=str(measured.get("runtime", info.get("runtime", ""))),
            runtime_version=str(measured.get("runtime_version", info.get("runtime_version", ""))),
            device=str(info.get("device", "")),
            host=str(info.get("host", "")),
            imgsz=imgsz,
            settings={
                **measured.get("settings", {}),
                "agent": self.url,
                "agent_version": info.get("agent"),
                "power_mode": info.get("power_mode"),
                "clocks_pinned": info.get("clocks_pinned"),
            },
        )
