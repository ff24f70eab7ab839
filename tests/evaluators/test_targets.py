from __future__ import annotations

import os
from pathlib import Path

import pytest

from yolotune import YolotuneError
from yolotune._artifact import FloatPrecision
from yolotune.evaluators import (
    LatencyStats,
    LocalCPUTarget,
    LocalCUDATarget,
    Provenance,
    Target,
    TargetSpec,
    TensorRTTarget,
    add_target_file,
    get_target,
    register_runtime,
    target_names,
    target_spec,
)
from yolotune.evaluators import _spec as spec_module
from yolotune.evaluators import _target as target_module
from yolotune.evaluators._local_cpu import available_cpus
from yolotune.evaluators._tensorrt import build_command


def test_built_in_targets_and_their_precisions() -> None:
    names = set(target_names())
    assert {"local-cpu", "local-cuda", "jetson-orin", "jetson-orin-nano", "jetson-xavier-nx", "raspberry-pi-5"} <= names
    local = get_target("local-cpu")
    assert isinstance(local, LocalCPUTarget) and local.precisions == ("int8", "fp32")
    orin = target_spec("jetson-orin")
    assert orin.agent and orin.runtime == "tensorrt" and {"int8", "fp16"} <= set(orin.precisions)
    assert target_spec("raspberry-pi-5").threads == 4
    # INT8 activation types: uint8 only on local-cpu (int8 is slower than FP32 on x86), TensorRT's
    # symmetric int8 on the Jetsons, both on the Pi (listed), and uint8 on any ONNX Runtime CPU
    # target that names none (ONNX Runtime's own default)
    assert local.activations == target_spec("local-cpu").activations == ("uint8",)
    assert orin.activations == ("int8",) and target_spec("local-cuda").activations == ("int8",)
    assert target_spec("raspberry-pi-5").activations == ("uint8", "int8")
    assert TargetSpec(name="laptop", runtime="onnxruntime", precisions=("int8", "fp32")).activations == ("uint8",)
    assert TargetSpec(name="gpu", runtime="onnxruntime-gpu", precisions=("int8",)).activations == ("int8",)
    pi = target_spec("raspberry-pi-5")
    assert TargetSpec.from_dict(pi.name, pi.to_dict()) == pi
    with pytest.raises(YolotuneError, match="unknown target 'jetson-nano'; known targets: jetson-orin"):
        get_target("jetson-nano")


def test_a_device_target_needs_its_agent() -> None:
    with pytest.raises(YolotuneError, match=r"tune agent .* --device-url http://DEVICE:8765"):
        get_target("jetson-orin")
    with pytest.raises(YolotuneError, match="--device-url and --device-token-file are only for device targets"):
        get_target("local-cpu", device_url="http://127.0.0.1:8765")
    with pytest.raises(YolotuneError, match="--device-token-file are only for device targets"):
        get_target("local-cpu", device_token="t")
    bad = ("127.0.0.1:8765", "http://127.0.0.1:abc", "http://127.0.0.1:99999", "http://[::1", "http://a b:1")
    # a path or query would be put before the agent's own (/v1/v1/info), and the agent speaks plain http
    for url in (*bad, "http://127.0.0.1:8765/v1", "http://127.0.0.1:8765/?x=1", "https://127.0.0.1:8765"):
        with pytest.raises(YolotuneError) as refused:
            get_target("jetson-orin", device_url=url)
        assert str(refused.value) == (
            "--device-url must look like http://HOST:PORT (port 1-65535; plain http, no path: `tune agent` serves its "
            f"own); got '{url}'"
        )
    assert get_target("jetson-orin", device_url="http://127.0.0.1:8765/").url == "http://127.0.0.1:8765"
    unreachable = get_target("jetson-orin", device_url="http://127.0.0.1:9")
    with pytest.raises(YolotuneError, match=r"unreachable.*start `tune agent"):
        unreachable.check()


def test_user_targets_from_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("yolotune.evaluators._spec._SPECS", {})
    monkeypatch.setattr("yolotune.evaluators._spec._LOADED", [])
    f = tmp_path / "mine.yaml"
    f.write_text(
        "my-board:\n  runtime: onnxruntime\n  agent: true\n  precisions: [int8]\n  imgsz: 256\n"
        "local-cpu:\n  runtime: onnxruntime\n  precisions: [fp32]\n  threads: 1\n"
        "every-core:\n  runtime: onnxruntime\n  precisions: [fp32]\n  threads: all\n"  # as `tune targets` lists null
    )
    assert add_target_file(f) == ["my-board", "local-cpu", "every-core"]
    assert target_spec("every-core").threads is None
    assert target_spec("my-board") == TargetSpec(
        name="my-board", runtime="onnxruntime", precisions=("int8",), imgsz=256, agent=True
    )
    replaced = get_target("local-cpu")  # a user entry replaces the built-in one
    assert replaced.precisions == ("fp32",) and isinstance(replaced, LocalCPUTarget) and replaced.threads == 1
    assert "jetson-orin" in target_names()  # the built-ins are still there

    bad = tmp_path / "bad.yaml"
    for text, message in (
        (
            "x:\n  runtime: onnxruntime\n  precisions: [int4]\n",
            r"precisions of runtime onnxruntime must be a non-empty list drawn from int8, fp32 with no repeats; "
            r"got \['int4'\]",
        ),
        (
            "x:\n  runtime: onnxruntime\n  precisions: [fp16]\n",
            r"precisions of runtime onnxruntime must be a non-empty list drawn from int8, fp32 .*got \['fp16'\]",
        ),
        (
            "x:\n  runtime: onnxruntime\n  precisions: [int8, int8]\n",
            r"drawn from int8, fp32 with no repeats; got \['int8', 'int8'\]",
        ),
        ("x:\n  runtime: onnxruntime\n  precisions: {int8: 1}\n", "precisions must be a non-empty list"),
        (
            "x:\n  runtime: tensorrt\n  precisions: [int8]\n  activations: [uint8]\n",
            r"activations of runtime tensorrt must be a non-empty list drawn from int8 with no repeats; "
            r"got \['uint8'\]",
        ),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  agent: 'no'\n", "agent must be true or false"),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  threads: true\n", "threads must be a positive"),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  description: [a]\n", "description must be one line"),
        ("x:\n  runtime: tflite\n  precisions: [int8]\n", "runtime 'tflite' is not one of"),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  imgsz: 300\n", "imgsz must be a multiple of 32"),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  imgsz: 99999968\n", "from 32 to 4096; got 99999968"),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  imgsz: '320'\n", r"whole number \(unquoted\)"),
        (
            "x:\n  runtime: onnxruntime\n  precisions: [int8]\n  activations: [int4]\n",
            "activations of runtime onnxruntime must",
        ),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  activations: uint8\n", "activations must be a non-empty"),
        ("x:\n  runtime: onnxruntime\n  precision: [int8]\n", "unknown keys precision"),
        ("x: [a: 1\ny: 2\n", r"is not valid YAML: expected ',' or '\]', but got .* at line 2, column 2"),
        # PyYAML would keep the second threads without a word
        (
            "x:\n  runtime: onnxruntime\n  precisions: [int8]\n  threads: 1\n  threads: 4\n",
            r"is not valid YAML: found duplicate key 'threads' at line 5, column 3",
        ),
    ):
        bad.write_text(text)
        with pytest.raises(YolotuneError, match=message):
            add_target_file(bad)
    with pytest.raises(YolotuneError, match="not found"):
        add_target_file(tmp_path / "missing.yaml")
    with pytest.raises(YolotuneError, match="is a directory, not a YAML file"):
        add_target_file(tmp_path)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(YolotuneError, match="cannot be read as UTF-8 text"):
        add_target_file(bad)


def test_user_targets_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("yolotune.evaluators._spec._SPECS", {})
    monkeypatch.setattr("yolotune.evaluators._spec._LOADED", [])
    f = tmp_path / "env.yaml"
    f.write_text("env-cpu:\n  runtime: onnxruntime\n  precisions: [int8, fp32]\n")
    monkeypatch.setenv("YOLOTUNE_TARGETS", str(f))
    assert get_target("env-cpu").name == "env-cpu"


def test_trtexec_flags_follow_the_models_precision_record() -> None:
    plain = build_command("trtexec", Path("m.onnx"), Path("e.engine"), FloatPrecision())
    assert plain == ["trtexec", "--onnx=m.onnx", "--saveEngine=e.engine", "--skipInference"]
    int8 = build_command("trtexec", Path("m.onnx"), Path("e"), FloatPrecision(int8=True))
    assert "--int8" in int8 and "--fp16" not in int8
    mixed = build_command(
        "trtexec", Path("m.onnx"), Path("e"), FloatPrecision(int8=True, fp16_nodes=("a",), fp32_nodes=("b", "c"))
    )
    assert {"--int8", "--fp16", "--layerPrecisions=b:fp32,c:fp32", "--precisionConstraints=obey"} <= set(mixed)


def test_the_tensorrt_version_is_read_from_trtexec_when_its_python_module_is_missing(tmp_path: Path) -> None:
    from yolotune.evaluators._tensorrt import trtexec_version

    for banner, version in (
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v8602] # trtexec --help", "8.6.2"),  # JetPack 6.0
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help", "10.3.0"),  # JetPack 6.1
        ("trtexec: something else", "unknown"),
    ):
        fake = tmp_path / f"trtexec-{version}"
        fake.write_text(f"#!/bin/sh\necho '{banner}'\necho '=== Model Options ==='\n")
        fake.chmod(0o755)
        assert trtexec_version(str(fake)) == version
    assert trtexec_version(str(tmp_path / "gone")) == "unknown"


def test_gpu_runtimes_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(YolotuneError, match="needs onnxruntime-gpu"):
            LocalCUDATarget().check()
    monkeypatch.setenv("TRTEXEC", "/nonexistent/trtexec")
    monkeypatch.setenv("PATH", "/nonexistent")
    trt = TensorRTTarget()
    if trt.trtexec is None:
        with pytest.raises(YolotuneError, match="needs TensorRT's trtexec"):
            trt.check()


def test_precisions_need_not_list_all_the_runtime_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("yolotune.evaluators._spec._SPECS", {})
    monkeypatch.setattr("yolotune.evaluators._spec._LOADED", [])
    f = tmp_path / "mine.yaml"
    f.write_text("fp32-only:\n  runtime: onnxruntime\n  precisions: [fp32]\n")
    assert add_target_file(f) == ["fp32-only"] and target_spec("fp32-only").precisions == ("fp32",)


def test_a_target_timed_here_gets_no_more_threads_than_this_process_has_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("yolotune.evaluators._spec._SPECS", {})
    monkeypatch.setattr("yolotune.evaluators._spec._LOADED", [])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert available_cpus() == cpus
    # the built-in local-cpu uses every CPU this process has, whatever the machine
    builtin = get_target("local-cpu")
    builtin.check()
    assert isinstance(builtin, LocalCPUTarget) and builtin.threads == cpus
    f = tmp_path / "mine.yaml"
    f.write_text(
        f"fits:\n  runtime: onnxruntime\n  precisions: [int8, fp32]\n  threads: {cpus}\n"
        f"oversubscribed:\n  runtime: onnxruntime\n  precisions: [int8, fp32]\n  threads: {cpus + 62}\n"
        f"board:\n  runtime: onnxruntime\n  agent: true\n  precisions: [int8, fp32]\n  threads: {cpus + 62}\n"
    )
    assert add_target_file(f) == ["fits", "oversubscribed", "board"]  # listing targets is no reason to refuse
    get_target("fits").check()
    with pytest.raises(
        YolotuneError,
        match=rf"^target oversubscribed asks for {cpus + 62} threads but this machine gives this process {cpus} CPUs; "
        rf"set its threads to {cpus} or fewer \(null uses every CPU\) in its targets file$",
    ):
        get_target("oversubscribed").check()
    # a device target's threads are the device's CPUs: this machine does not judge them
    board = get_target("board", device_url="http://127.0.0.1:9")
    assert board.name == "board"


class _FakeTarget(Target):
    """A deterministic target: every model takes 1 ms."""

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec

    def benchmark(self, model_path: Path, *, imgsz: int) -> LatencyStats:
        return LatencyStats(median_ms=1.0, p90_ms=1.0, mean_ms=1.0, cv=0.0, runs=1, warmup=0, started_at=0, ended_at=0)

    def provenance(self, *, imgsz: int) -> Provenance:
        return Provenance(
            target=self.name, runtime="fake", runtime_version="0", device="none", host="here", imgsz=imgsz
        )


@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runtimes and targets registered in a test are gone after it."""
    target_module._load_runtimes()  # the built-in runtimes register into the real registry first
    monkeypatch.setattr(target_module, "_RUNTIMES", dict(target_module._RUNTIMES))
    for table in ("RUNTIME_PRECISIONS", "RUNTIME_ACTIVATIONS", "DEFAULT_ACTIVATIONS"):
        monkeypatch.setattr(spec_module, table, dict(getattr(spec_module, table)))
    monkeypatch.setattr(spec_module, "_SPECS", {})
    monkeypatch.setattr(spec_module, "_LOADED", [])


@pytest.mark.usefixtures("private_registry")
def test_a_registered_runtime_can_be_named_by_targets(tmp_path: Path) -> None:
    from yolotune.search import CandidateSettings, make_target

    with pytest.raises(YolotuneError, match=r"runtime 'fake' is not one of onnxruntime, .*register_runtime"):
        TargetSpec(name="myfake", runtime="fake", precisions=("int8", "fp32"))
    register_runtime("fake", _FakeTarget, precisions=("int8", "fp32"), activations=("int8", "uint8"))
    spec = TargetSpec(name="myfake", runtime="fake", precisions=("int8", "fp32"))
    assert spec.activations == ("int8",)  # the runtime's fast one, listed first
    direct = get_target(spec)
    assert isinstance(direct, _FakeTarget) and direct.spec == spec and direct.name == "myfake"
    with pytest.raises(YolotuneError, match=r"precisions of runtime fake must be .* drawn from int8, fp32"):
        TargetSpec(name="myfake", runtime="fake", precisions=("fp16",))
    # a targets file names it too, and the search builds its target by name
    f = tmp_path / "mine.yaml"
    f.write_text("board:\n  runtime: fake\n  precisions: [int8]\n  activations: [uint8, int8]\n")
    assert add_target_file(f) == ["board"]
    target = make_target(CandidateSettings(target="board"))
    assert isinstance(target, _FakeTarget) and target.name == "board"
    assert target.precisions == ("int8",) and target.activations == ("uint8", "int8")
    assert target.benchmark(Path("m.onnx"), imgsz=320).median_ms == 1.0
    assert target.provenance(imgsz=320).target == "board"


@pytest.mark.usefixtures("private_registry")
def test_registering_a_runtime_checks_what_it_runs_and_keeps_what_a_built_in_runs() -> None:
    register_runtime("any", _FakeTarget)  # a new runtime runs every precision, with int8 activations
    assert spec_module.RUNTIME_PRECISIONS["any"] == ("int8", "fp16", "fp32")
    assert TargetSpec(name="t", runtime="any", precisions=("fp16",)).activations == ("int8",)
    register_runtime("onnxruntime", _FakeTarget)  # a built-in name: a new factory, the same tables
    assert TargetSpec(name="t", runtime="onnxruntime", precisions=("int8",)).activations == ("uint8",)
    assert spec_module.RUNTIME_PRECISIONS["onnxruntime"] == ("int8", "fp32")
    assert isinstance(get_target("local-cpu"), _FakeTarget)
    for kwargs, message in (
        ({"precisions": ("int4",)}, r"^runtime 'bad': precisions must be a non-empty list drawn from int8, fp16, fp32"),
        ({"precisions": "int8"}, r"precisions must be a non-empty list .*; got 'int8'$"),
        ({"activations": ()}, r"activations must be a non-empty list drawn from uint8, int8 with no repeats; got \(\)"),
    ):
        with pytest.raises(YolotuneError, match=message):
            register_runtime("bad", _FakeTarget, **kwargs)  # type: ignore[arg-type]
        assert "bad" not in spec_module.RUNTIME_PRECISIONS and "bad" not in target_module._RUNTIMES
    with pytest.raises(YolotuneError, match="a runtime needs a non-empty name"):
        register_runtime("", _FakeTarget)
