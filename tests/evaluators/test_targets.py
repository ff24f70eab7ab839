from __future__ import annotations

from pathlib import Path

import pytest

from yolotune import YolotuneError
from yolotune._artifact import FloatPrecision
from yolotune.evaluators import (
    LocalCPUTarget,
    LocalCUDATarget,
    TargetSpec,
    TensorRTTarget,
    add_target_file,
    get_target,
    target_names,
    target_spec,
)
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
    for url in ("127.0.0.1:8765", "http://127.0.0.1:abc", "http://127.0.0.1:99999", "http://[::1", "http://a b:1"):
        with pytest.raises(YolotuneError, match=r"--device-url must look like http://HOST:PORT \(port 1-65535\)"):
            get_target("jetson-orin", device_url=url)
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
    )
    assert add_target_file(f) == ["my-board", "local-cpu"]
    assert target_spec("my-board") == TargetSpec(
        name="my-board", runtime="onnxruntime", precisions=("int8",), imgsz=256, agent=True
    )
    replaced = get_target("local-cpu")  # a user entry replaces the built-in one
    assert replaced.precisions == ("fp32",) and isinstance(replaced, LocalCPUTarget) and replaced.threads == 1
    assert "jetson-orin" in target_names()  # the built-ins are still there

    bad = tmp_path / "bad.yaml"
    for text, message in (
        ("x:\n  runtime: onnxruntime\n  precisions: [int4]\n", "precisions of runtime onnxruntime must list"),
        (
            "x:\n  runtime: onnxruntime\n  precisions: [fp16]\n",
            "precisions of runtime onnxruntime must list int8, fp32",
        ),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8, int8]\n", "must list int8, fp32, each once"),
        ("x:\n  runtime: onnxruntime\n  precisions: {int8: 1}\n", "precisions must be a non-empty list"),
        ("x:\n  runtime: tensorrt\n  precisions: [int8]\n  activations: [uint8]\n", "activations of runtime tensorrt"),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  agent: 'no'\n", "agent must be true or false"),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  threads: true\n", "threads must be a positive"),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  description: [a]\n", "description must be one line"),
        ("x:\n  runtime: tflite\n  precisions: [int8]\n", "runtime 'tflite' is not one of"),
        ("x:\n  runtime: onnxruntime\n  precisions: [int8]\n  imgsz: 300\n", "imgsz must be a multiple of 32"),
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
