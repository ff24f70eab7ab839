"""The device agent on loopback with the ONNX Runtime backend: real HTTP, real timings."""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import math
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from yolotune import StepError, YolotuneError
from yolotune.evaluators import (
    AgentConfig,
    AgentServer,
    RemoteTarget,
    TargetSpec,
    get_target,
    int8_saturates,
    needs_reduce_range,
    read_token,
)

TOKEN = "s3cret-token"
BOARD = TargetSpec(name="test-board", runtime="onnxruntime", precisions=("int8", "fp32"), threads=1, agent=True)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentServer]:
    server = AgentServer(config=AgentConfig(port=0, token=TOKEN, cache_dir=tmp_path, max_upload_bytes=32 * 2**20))
    server.start()
    yield server
    server.stop()


def _raw(url: str, method: str, path: str, *, headers: dict[str, str], body: bytes | None = None) -> tuple[int, dict]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.putrequest(method, path)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_agent_answers_with_its_device_and_refuses_a_wrong_or_missing_token(agent: AgentServer) -> None:
    status, body = _raw(agent.url, "GET", "/v1/info", headers={})
    assert status == 401 and "token" in body["error"]
    status, body = _raw(agent.url, "GET", "/v1/info", headers={"Authorization": "Bearer nope"})
    assert status == 401 and "--device-token-file must hold the token of the agent's --token-file" in body["error"]
    status, _ = _raw(agent.url, "GET", "/v1/info", headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401
    status, _ = _raw(agent.url, "GET", "/v1/info", headers={"Authorization": f"bearer {TOKEN}"})  # RFC 7235
    assert status == 200
    status, info = _raw(agent.url, "GET", "/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert info["runtime"] == "onnxruntime" and info["precisions"] == ["int8", "fp32"]
    assert info["device"] and info["host"] and info["runtime_version"]
    assert "power_mode" in info and "clocks_pinned" in info

    wrong = get_target(BOARD, device_url=agent.url, device_token="nope")
    with pytest.raises(YolotuneError, match="answered 401"):
        wrong.check()
    none = get_target(BOARD, device_url=agent.url)  # no --device-token-file at all: said so
    with pytest.raises(YolotuneError) as refused:
        none.check()
    assert str(refused.value) == (
        f"device agent at {agent.url} answered 401: it needs its token: pass --device-token-file, a copy of the "
        "agent's --token-file"
    )
    orin = get_target("jetson-orin", device_url=agent.url, device_token=TOKEN)
    with pytest.raises(YolotuneError, match="runs onnxruntime; target jetson-orin needs tensorrt"):
        orin.check()
    # a target asking for more threads than the device gives its agent: refused before any candidate is built
    assert info["cpus"] >= 1
    greedy = dataclasses.replace(BOARD, threads=info["cpus"] + 1)
    with pytest.raises(
        YolotuneError, match=rf"asks for {info['cpus'] + 1} threads but the device at .* gives its agent"
    ):
        get_target(greedy, device_url=agent.url, device_token=TOKEN).check()


def test_a_checked_device_target_builds_int8_weights_for_the_agents_cpu(agent: AgentServer) -> None:
    # the agent says whether its CPU's INT8 kernels saturate; here it runs on this machine's CPU
    _, info = _raw(agent.url, "GET", "/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
    assert info["int8_saturates"] is int8_saturates()
    board = RemoteTarget(spec=BOARD, url=agent.url, token=TOKEN)
    assert board.reduce_range is False  # not known before the agent is asked
    board.check()
    assert board.reduce_range is int8_saturates()
    assert needs_reduce_range(board) is int8_saturates()


def test_uploads_are_size_limited_and_checked_and_the_agent_keeps_serving(agent: AgentServer, fp32_onnx_160) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # refused from the Content-Length alone: the body is never read
    status, body = _raw(
        agent.url, "POST", "/v1/benchmark?imgsz=160", headers={**auth, "Content-Length": str(64 * 2**20)}
    )
    assert status == 413 and "over the agent's 32 MiB limit" in body["error"]
    garbage = b"\x80\x04\x95 not onnx, a pickle maybe" * 10
    status, body = _raw(
        agent.url,
        "POST",
        "/v1/benchmark?imgsz=160",
        headers={**auth, "Content-Length": str(len(garbage))},
        body=garbage,
    )
    assert status == 400 and body["error"].startswith("not an ONNX model")
    status, body = _raw(agent.url, "POST", "/v1/benchmark", headers={**auth, "Content-Length": "0"})
    assert status == 400 and "imgsz" in body["error"]
    status, body = _raw(agent.url, "POST", "/v1/benchmark?imgsz=32000", headers={**auth, "Content-Length": "0"})
    assert status == 400 and "32 ≤ N ≤ 4096" in body["error"]  # a typo would allocate gigabytes

    # a model the runtime cannot run at that size: a clear failure, then a good request still works
    target = get_target(BOARD, device_url=agent.url, device_token=TOKEN)
    with pytest.raises(StepError, match="answered 422: benchmark failed"):
        target.benchmark(fp32_onnx_160, imgsz=320)
    stats = target.benchmark(fp32_onnx_160, imgsz=160)
    assert stats.runs >= 50 and 0 < stats.median_ms <= stats.p90_ms
    assert target._last is not None and target._last["latency"]["spread"] == stats.spread
    prov = target.provenance(imgsz=160)
    assert prov.target == "test-board" and prov.settings["agent"] == agent.url
    assert prov.settings["intra_op_threads"] == 1  # the target's threads reached the agent
    # a file over the agent's limit is refused before it is sent, with the setting that lets it through
    small = RemoteTarget(spec=BOARD, url=agent.url, token=TOKEN)
    small._info = {**target.info(), "max_upload_bytes": 2**20}  # as an agent started with --max-upload-mb 1 says
    mib = fp32_onnx_160.stat().st_size / 2**20
    with pytest.raises(StepError) as refused:
        small.benchmark(fp32_onnx_160, imgsz=160)
    over = (
        f"latency failed: model is {mib:.1f} MiB, over the agent's 1 MiB limit: restart `tune agent` with "
        f"--max-upload-mb {math.ceil(mib)} or more (the FP32 reference is the largest file a search sends)"
    )
    assert str(refused.value) == over
    # the agent restarted with a lower limit than the one this client read: its refusal, not a broken pipe
    agent.config = dataclasses.replace(agent.config, max_upload_bytes=2**20)
    agent.info["max_upload_bytes"] = 2**20
    with pytest.raises(StepError) as refused:
        target.benchmark(fp32_onnx_160, imgsz=160)  # still holds the old limit, 32 MiB
    # the agent's own 413, or (when the agent closed before the body was sent) this client's reading of its new limit
    assert f"over the agent's 1 MiB limit: restart `tune agent` with --max-upload-mb {math.ceil(mib)}" in str(
        refused.value
    )
    assert "Broken pipe" not in str(refused.value)


def test_concurrent_requests_are_timed_one_after_another(agent: AgentServer, fp32_onnx_160) -> None:
    windows: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            stats = RemoteTarget(spec=BOARD, url=agent.url, token=TOKEN).benchmark(fp32_onnx_160, imgsz=160)
            windows.append((stats.started_at, stats.ended_at))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(windows) == 3
    windows.sort()
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end <= start  # no two timed windows overlap


def test_a_benchmark_over_the_time_limit_is_killed_and_reported(tmp_path: Path, fp32_onnx_160) -> None:
    server = AgentServer(config=AgentConfig(port=0, cache_dir=tmp_path, timeout_s=0.1)).start()  # loopback, no token
    try:
        target = get_target(BOARD, device_url=server.url)
        with pytest.raises(StepError, match=r"answered 504: benchmark exceeded the agent.s 0\.1 s limit"):
            target.benchmark(fp32_onnx_160, imgsz=160)
        assert target.info()["runtime"] == "onnxruntime"  # still serving
    finally:
        server.stop()


def test_a_token_is_required_off_loopback_and_token_files_are_created_once(tmp_path: Path) -> None:
    with pytest.raises(YolotuneError, match=r"pass --token-file F to listen on 0\.0\.0\.0"):
        AgentConfig(host="0.0.0.0")
    assert AgentConfig(host="0.0.0.0", token="t").token == "t"
    f = tmp_path / "token"
    first = read_token(f, create=True)
    assert len(first) >= 32 and read_token(f, create=True) == first
    assert f.stat().st_mode & 0o077 == 0  # private to its owner
    with pytest.raises(YolotuneError, match="not found"):
        read_token(tmp_path / "missing")
    with pytest.raises(YolotuneError, match="is a directory"):
        read_token(tmp_path, create=True)
    (tmp_path / "binary.tok").write_bytes(b"\xff\xfe\x00token")
    with pytest.raises(YolotuneError, match=r"token file .*binary.tok is not text"):
        read_token(tmp_path / "binary.tok")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 70000}, "--port must be 0-65535"),
        ({"threads": 0}, "--threads must be positive"),
        ({"timeout_s": 0}, "--timeout must be positive"),
        ({"max_upload_bytes": 0}, "--max-upload-mb must be positive"),
        ({"host": "no-such-host.invalid", "token": "t"}, "cannot listen on no-such-host.invalid"),
        ({"host": "no-such-host.invalid"}, "cannot listen on no-such-host.invalid"),  # not "pass --token-file"
        ({"threads": 4096}, r"--threads 4096 is more than the \d+ CPUs this machine gives the agent"),
    ],
)
def test_agent_settings_that_would_fail_every_request_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(YolotuneError, match=message):
        AgentConfig(**kwargs)


def test_a_server_that_is_not_the_agent_is_named_as_such(tmp_path: Path) -> None:
    import http.server

    answers = {"/v1/info": (200, b"<html>hello</html>")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            status, body = answers.get(self.path, (404, b"File not found"))
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for body, why in (
            (b"<html>hello</html>", "its answer is not JSON"),
            (b"[1, 2]", "its answer is not a JSON object"),
            (b'{"runtime": "onnxruntime", "precisions": ["int8", "fp32"]}', "its /v1/info names no agent version"),
        ):
            answers["/v1/info"] = (200, body)
            with pytest.raises(YolotuneError, match=rf"server at {url} is not a `tune agent`.*\({why}"):
                get_target(BOARD, device_url=url).check()
        answers.clear()  # a plain web server: 404 without the agent's JSON error
        with pytest.raises(
            YolotuneError, match=r"not a `tune agent`; check --device-url's host and port \(it answered 404"
        ):
            get_target(BOARD, device_url=url).check()
    finally:
        server.shutdown()


def test_a_server_of_another_protocol_or_an_answer_broken_off_is_one_line(tmp_path: Path) -> None:
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    replies: list[bytes] = []

    def serve() -> None:  # answers each connection with the next canned reply, then hangs up
        while replies:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(replies.pop(0))

    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    replies += [b"SSH-2.0-OpenSSH_9.6p1 Debian\r\n"]  # --device-url pointing at the SSH port
    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(YolotuneError, match=rf"server at {url} is not a `tune agent`.*does not speak HTTP"):
        get_target(BOARD, device_url=url).check()
    # an agent killed while sending its answer: the headers promise more than comes
    replies += [b'HTTP/1.0 200 OK\r\nContent-Length: 400\r\n\r\n{"agent": ']
    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(YolotuneError, match=rf"device agent at {url} broke off its answer \(IncompleteRead\)"):
        get_target(BOARD, device_url=url).check()
    listener.close()


def test_an_agent_without_its_runtime_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from yolotune.evaluators._tensorrt import find_trtexec

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("TRTEXEC", "/nonexistent/trtexec")
    if find_trtexec() is not None:  # pragma: no cover - JetPack's fixed path exists
        pytest.skip("trtexec is installed at JetPack's path")
    with pytest.raises(YolotuneError, match="needs TensorRT's trtexec"):
        AgentServer(config=AgentConfig(port=0, runtime="tensorrt", cache_dir=tmp_path))


def test_an_agent_that_freezes_during_a_benchmark_is_noticed_long_before_the_timeout(fp32_onnx_160) -> None:
    import http.server
    import time

    frozen = threading.Event()
    info = {"agent": "0", "runtime": "onnxruntime", "precisions": ["int8", "fp32"], "max_upload_bytes": 2**30}

    class Handler(http.server.BaseHTTPRequestHandler):  # an agent that hangs once a benchmark arrives
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if frozen.is_set():
                time.sleep(30)
                return
            body = json.dumps(info).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            frozen.set()
            time.sleep(30)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        target = RemoteTarget(spec=BOARD, url=url, timeout_s=600, ping_s=1)
        target.check()
        started = time.monotonic()
        with pytest.raises(StepError, match=r"stopped answering during the benchmark: unreachable"):
            target.benchmark(fp32_onnx_160, imgsz=160)
        assert time.monotonic() - started < 10  # not the 600 s the answer could take
    finally:
        server.shutdown()


def _tiny_onnx(path: Path, op: str) -> Path:
    """A one-node model on a 160-px image: enough for the agent to check, store and time."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 160, 160])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 160, 160])
    graph = helper.make_graph([helper.make_node(op, ["images"], ["out"])], "tiny", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_the_model_cache_keeps_the_most_recently_used_within_its_limit(tmp_path: Path) -> None:
    files = [_tiny_onnx(tmp_path / f"{op}.onnx", op) for op in ("Relu", "Sigmoid", "Tanh")]
    limit = sum(f.stat().st_size for f in files[:2])  # room for two
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    mine = _tiny_onnx(cache / "my_model.onnx", "Relu")  # --cache-dir shared with the user's own files
    theirs = _tiny_onnx(cache / "models" / "best.onnx", "Relu")
    (cache / "models" / "upload.1234.tmp").write_bytes(b"half an upload a killed agent left")
    server = AgentServer(config=AgentConfig(port=0, token=TOKEN, cache_dir=cache, max_cache_bytes=limit))
    server.start()
    try:
        target = get_target(BOARD, device_url=server.url, device_token=TOKEN)
        for f in (files[0], files[1], files[0], files[2]):  # Relu used again before Tanh arrives
            assert target.benchmark(f, imgsz=160).median_ms > 0
    finally:
        server.stop()
    import hashlib

    kept = {p.name for p in (cache / "models").iterdir()}
    assert kept == {hashlib.sha256(f.read_bytes()).hexdigest() + ".onnx" for f in (files[0], files[2])} | {"best.onnx"}
    assert mine.is_file() and theirs.is_file()  # only the agent's own files are ever deleted


def test_an_upload_cut_short_leaves_no_partial_file(agent: AgentServer, fp32_onnx_160) -> None:
    import socket

    body = fp32_onnx_160.read_bytes()
    parts = urllib.parse.urlsplit(agent.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        head = (
            f"POST /v1/benchmark?imgsz=160 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)  # the client goes away halfway
        chunks = []  # headers and body may come in separate packets: read to the end
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        answer = b"".join(chunks).decode(errors="replace")
    assert " 400 " in answer.splitlines()[0] and "upload cut short" in answer
    assert not list((agent.cache_dir / "models").glob("upload.*"))


def test_one_agent_per_cache_folder_so_none_deletes_models_another_is_timing(tmp_path: Path) -> None:
    first = AgentServer(config=AgentConfig(port=0, token=TOKEN, cache_dir=tmp_path))
    first.start()
    try:
        # a second agent on the same folder would trim the first's models, and its start removes partial uploads
        with pytest.raises(YolotuneError) as refused:
            AgentServer(config=AgentConfig(port=0, token=TOKEN, cache_dir=tmp_path))
        assert str(refused.value) == (
            f"another `tune agent` uses the cache folder {tmp_path}: stop it, or give this one a folder of its own "
            "(--cache-dir DIR)"
        )
        other = AgentServer(config=AgentConfig(port=0, token=TOKEN, cache_dir=tmp_path / "other"))  # its own: fine
        other.start().stop()
    finally:
        stopping = threading.Thread(target=first.stop)  # stopped from another thread (a watcher, a signal handler)
        stopping.start()
        stopping.join(timeout=60)
    again = AgentServer(config=AgentConfig(port=0, token=TOKEN, cache_dir=tmp_path))  # the folder is free again
    again.start().stop()


def test_an_agent_replaced_by_another_device_at_the_same_address_is_never_timed_on(
    agent: AgentServer, fp32_onnx_160
) -> None:
    board = RemoteTarget(spec=BOARD, url=agent.url, token=TOKEN)
    board.check()
    first = board.provenance(imgsz=160).device
    assert board.benchmark(fp32_onnx_160, imgsz=160).median_ms > 0 and board.provenance(imgsz=160).device == first
    agent.info["device"] = "Raspberry Pi 5 Model B Rev 1.0"  # the agent restarted on another board, same URL
    said = (
        f"the agent at {agent.url} now runs on Raspberry Pi 5 Model B Rev 1.0, not on {first}, which this run timed "
        "on: its timings would not compare; bring that device back at this address (or start a new --study for "
        "this one)"
    )
    with pytest.raises(StepError) as refused:  # its timing is not taken as the first device's
        board.benchmark(fp32_onnx_160, imgsz=160)
    assert str(refused.value) == f"latency failed: {said}"
    with pytest.raises(YolotuneError) as lost:  # and the search's check calls the target lost: it stops, queued
        board.check()
    assert str(lost.value) == said


def test_a_stalled_upload_holds_up_no_other_and_a_client_gone_before_its_turn_is_not_timed(
    agent: AgentServer, fp32_onnx_160, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import time

    parts = urllib.parse.urlsplit(agent.url)
    head = (
        f"POST /v1/benchmark?imgsz=160&threads=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: {length}\r\n\r\n"
    )
    stalled = socket.create_connection((parts.hostname, parts.port))  # a client on a Wi-Fi link that dropped
    stalled.sendall(head.format(length=1_000_000).encode() + b"abc")
    try:
        target = RemoteTarget(spec=BOARD, url=agent.url, token=TOKEN, timeout_s=60)
        began = time.monotonic()
        assert target.benchmark(fp32_onnx_160, imgsz=160).median_ms > 0  # not behind the stalled upload
        alone = time.monotonic() - began
    finally:
        stalled.close()
    timed: list[str] = []
    run_child = agent._run_child

    def counted(model: Path, **kwargs: object) -> dict:
        timed.append(model.name)
        return run_child(model, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(agent, "_run_child", counted)
    body = fp32_onnx_160.read_bytes()
    busy = threading.Thread(target=lambda: target.benchmark(fp32_onnx_160, imgsz=160))
    busy.start()  # holds the agent's turn for about a timing
    while not timed:
        time.sleep(0.01)
    gone = socket.create_connection((parts.hostname, parts.port))  # queued behind it, then Ctrl-C'd
    gone.sendall(head.format(length=len(body)).encode() + body)
    time.sleep(min(alone / 4, 0.5))  # its upload read while the first is timed
    gone.close()
    busy.join(timeout=120)
    assert target.benchmark(fp32_onnx_160, imgsz=160).median_ms > 0
    assert len(timed) == 2  # the first and the last: the request whose client left was never timed


def test_requests_http_server_refuses_itself_are_answered_in_json_too(agent: AgentServer) -> None:
    for method in ("PUT", "DELETE"):  # http.server's own 501, a page of HTML before
        status, body = _raw(agent.url, method, "/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 501 and body["error"].startswith("Unsupported method")
        assert body["error"].endswith("the agent answers GET /v1/info and POST /v1/benchmark")
    status, _ = _raw(agent.url, "GET", "/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200  # and it keeps serving
