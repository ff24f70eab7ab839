"""What a candidate's exception means for its plan: a failed allocation is tried once more, other errors are not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch
from onnx import TensorProto, helper

from yolotune.errors import StepError
from yolotune.search import plan_of, run_search
from yolotune.search._executors import Crashed, Failed, failure


def _raised(make: Callable[[], Any]) -> Exception:
    try:
        make()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


def _wrapped(exc: Exception) -> StepError:
    """``exc`` as a step reports it: a one-line StepError raised from it."""
    try:
        raise StepError("validate", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    except StepError as step:
        return step


def _ort_arena_failure() -> None:
    """ONNX Runtime asked for a 1 PiB tensor, beyond any address space: its arena refuses (a ``Fail``)."""
    fill = helper.make_node(
        "ConstantOfShape", ["shape"], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0])
    )
    graph = helper.make_graph(
        [fill],
        "g",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    session.run(None, {"shape": np.array([2**48], dtype=np.int64)})  # float32: 2**50 bytes


@pytest.mark.parametrize(
    "allocate",
    [
        pytest.param(lambda: torch.empty(2**50, dtype=torch.uint8), id="torch"),
        pytest.param(lambda: np.empty(2**50, dtype=np.uint8), id="numpy"),
        pytest.param(_ort_arena_failure, id="onnxruntime"),
    ],
)
def test_a_failed_allocation_is_worth_a_retry_wherever_the_library_raised_it(allocate: Callable[[], Any]) -> None:
    exc = _raised(allocate)
    for seen in (exc, _wrapped(exc)):  # as raised, and as a step reports it (the cause holds the message)
        verdict = failure(seen)
        assert isinstance(verdict, Crashed), verdict
        assert verdict.reason.startswith("out of memory: ")


def test_other_errors_fail_the_plan_for_good() -> None:
    exc = _raised(lambda: ort.InferenceSession(b"not a model", providers=["CPUExecutionProvider"]))
    verdict = failure(_wrapped(exc))
    assert verdict == Failed(str(_wrapped(exc)))
    assert isinstance(failure(ValueError("bad ratio")), Failed)


def test_a_candidate_out_of_memory_is_recorded_failed_and_its_plan_runs_again(coco8_search, monkeypatch) -> None:
    import yolotune.search._executors as executors

    real = executors.build_candidate
    calls: list[int] = []

    def short_of_memory_once(**kwargs: Any) -> Any:  # the host, not the plan: the first build finds no memory
        calls.append(1)
        if len(calls) == 1:
            torch.empty(2**50, dtype=torch.uint8)
        return real(**kwargs)

    monkeypatch.setattr(executors, "build_candidate", short_of_memory_once)
    study = run_search(coco8_search(budget=3, study_name="s", sampler="random"))
    # the FP32 reference's retry was queued behind the other references: they were put back behind it
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    deferred = [t for t in failed if t.user_attrs["fail_reason"].startswith("queued again behind the FP32 reference")]
    failed = [t for t in failed if t not in deferred]
    assert len(failed) == 1 and len(deferred) == 2
    assert failed[0].user_attrs["fail_reason"].startswith("out of memory: unexpected RuntimeError: ")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.user_attrs["reference"] for t in complete] == ["fp32", "int8", "seeds"]  # its retry first
    retry = [t for t in complete if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and plan_of(retry[0]) == plan_of(failed[0])
