from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution

from yolotune.search import retime_front
from yolotune.studies import current_retiming, near_front, pareto_front


class _TableTarget:
    """True latencies by file name, on a machine whose speed changes from round to round.

    Each round times the reference and the two re-timed trials (three calls), so the speed factor
    changes every three calls: ×1, ×1.6, ×0.9, ... A disturbed search-time timing is what the
    study recorded; this target knows the true ones.
    """

    name = "local-cpu"

    def __init__(self, true_ms: dict[str, float], *, per_round: int) -> None:
        self.true_ms = true_ms
        self.per_round = per_round
        self.timed: list[str] = []

    def check(self) -> None:
        """Still there: a target that is lost raises here."""

    def benchmark(self, model_path: Path, *, imgsz: int):
        from yolotune.evaluators import LatencyStats

        speed = (1.0, 1.6, 0.9, 1.3, 1.1)[len(self.timed) // self.per_round % 5]
        self.timed.append(model_path.name)
        ms = self.true_ms[model_path.name] * speed
        return LatencyStats.from_samples([ms, ms], warmup=0, started_at=0.0, ended_at=0.0)


def _study(tmp_path: Path, *, store: Path | None = None) -> tuple[optuna.Study, dict[str, int]]:
    """The fp32 reference, two INT8 plans whose search timings ranked them wrongly, a slow one and an infeasible one."""
    study = optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize", "minimize", "minimize"]
    )
    common = {"params": {"x": 0.5}, "distributions": {"x": FloatDistribution(0.0, 1.0)}}
    rows = {  # name: (values as the search measured them, constraint, reference)
        "fp32": ([0.353, 12.7, 15.0], -0.01, "fp32"),
        "shared": ([0.347, 3.5, 9.1], -0.003, ""),  # truly the fastest: its one timing was disturbed
        "separate": ([0.350, 3.5, 8.2], -0.007, ""),
        "slow": ([0.340, 3.5, 20.0], -0.001, ""),  # more than 30% slower than "separate": not re-timed
        "pruned": ([0.0, 1.4, 5.0], 0.34, ""),  # infeasible under --max-map-drop
    }
    numbers = {}
    for name, (values, drop, reference) in rows.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(name.encode())
        attrs = {"artifact": str(path), "brief": name, **({"reference": reference} if reference else {})}
        if store is not None:  # a copy in an artifact store, under its id, as Optuna's file-system store keeps it
            store.mkdir(exist_ok=True)
            (store / f"id-{name}").write_bytes(name.encode())
            attrs["artifacts"] = {path.name: f"id-{name}"}
        study.add_trial(
            optuna.trial.create_trial(values=values, user_attrs=attrs, constraints={"map_drop": drop}, **common)
        )
        numbers[name] = len(numbers)
    return study, numbers


def test_the_trials_noise_could_put_on_the_front_are_re_timed_and_the_front_found_on_their_rounds(
    tmp_path: Path,
) -> None:
    study, n = _study(tmp_path)
    # the search's front: "separate" looked faster than "shared", as accurate and as small
    assert [r.brief for r in pareto_front(study)] == ["separate", "fp32"]
    assert [t.number for t in near_front(study)] == [n["fp32"], n["shared"], n["separate"]]

    target = _TableTarget({"fp32.onnx": 13.0, "shared.onnx": 6.3, "separate.onnx": 6.8}, per_round=3)
    steps: list[tuple[int, str]] = []
    retiming = retime_front(study, target=target, imgsz=320, rounds=5, on_step=lambda *a: steps.append(a))
    assert retiming == current_retiming(study) and retiming is not None
    assert retiming.trials == (n["shared"], n["separate"]) and retiming.rounds == 5
    forward = ["fp32.onnx", "shared.onnx", "separate.onnx"]
    assert target.timed == (forward + forward[::-1]) * 2 + forward
    assert steps[:3] == [(n["fp32"], "re-timing 1/5"), (n["shared"], "re-timing 1/5"), (n["separate"], "re-timing 1/5")]

    front = pareto_front(study)
    # both INT8 plans are on it now, the faster first; the speed-ups are exact: each round's drift cancels
    assert [r.brief for r in front] == ["shared", "separate", "fp32"]
    assert [r.speedup for r in front] == pytest.approx([13.0 / 6.3, 13.0 / 6.8, 1.0])
    assert front[0].retimed is not None and front[0].retimed.q1 == pytest.approx(front[0].retimed.q3)
    assert front[0].latency_ms == 9.1  # the objective stays what the search measured
    assert front[0].retimed_ms == pytest.approx(6.3 * 1.1)  # median over rounds sped ×1, 1.6, 0.9, 1.3, 1.1

    # the same call again times nothing; a trial completed since makes the re-timing out of date
    assert retime_front(study, target=target, imgsz=320, rounds=5) == retiming and len(target.timed) == 15
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.1, 2.0, 30.0],
            params={"x": 0.1},
            distributions={"x": FloatDistribution(0.0, 1.0)},
            constraints={"map_drop": 0.2},
        )
    )
    assert current_retiming(study) is None
    assert [r.brief for r in pareto_front(study)] == ["separate", "fp32"]


def test_a_reference_that_cannot_be_timed_keeps_the_rounds_done(tmp_path: Path) -> None:
    from yolotune.errors import StepError

    study, n = _study(tmp_path)

    class _Failing(_TableTarget):
        def benchmark(self, model_path: Path, *, imgsz: int):
            if len(self.timed) >= 4 and model_path.name == "fp32.onnx":
                raise StepError("latency", "the device went away")
            return super().benchmark(model_path, imgsz=imgsz)

    target = _Failing({"fp32.onnx": 13.0, "shared.onnx": 6.3, "separate.onnx": 6.8}, per_round=3)
    retiming = retime_front(study, target=target, imgsz=320, rounds=3)
    assert retiming is not None and retiming.rounds == 1
    assert retiming.failed == {n["fp32"]: "latency failed: the device went away"}
    assert current_retiming(study) == retiming  # one round done: the front is found on it
    # the next call goes on from the round done: it times one more, and the reference is no longer failed
    fresh = _TableTarget(target.true_ms, per_round=3)
    again = retime_front(study, target=fresh, imgsz=320, rounds=2)
    assert again is not None and again.rounds == 2 and not again.failed and len(fresh.timed) == 3
    assert again.timings[n["shared"]][0] == retiming.timings[n["shared"]][0]  # the first round is kept

    # a round dropped because the reference failed drops the trials' failures met in it too: in the
    # second round (reversed) "separate" fails, then the reference
    class _FlakyRound(_TableTarget):
        def benchmark(self, model_path: Path, *, imgsz: int):
            if len(self.timed) >= 3 and model_path.name in ("fp32.onnx", "separate.onnx"):
                self.timed.append(model_path.name)
                raise StepError("latency", "the device hiccuped")
            return super().benchmark(model_path, imgsz=imgsz)

    (tmp_path / "other").mkdir()
    other, m = _study(tmp_path / "other")
    flaky_target = _FlakyRound(target.true_ms, per_round=3)
    flaky = retime_front(other, target=flaky_target, imgsz=320, rounds=3)
    assert flaky_target.timed[3:] == ["separate.onnx", "shared.onnx", "fp32.onnx"]
    assert flaky is not None and flaky.rounds == 1 and set(flaky.failed) == {m["fp32"]}
    # asked for no more rounds than are done: nothing timed, and the record no longer blames the reference
    steady = _TableTarget(target.true_ms, per_round=3)
    kept = retime_front(other, target=steady, imgsz=320, rounds=1)
    assert kept is not None and kept.rounds == 1 and not kept.failed and not steady.timed
    assert current_retiming(other) == kept
    more = retime_front(other, target=steady, imgsz=320, rounds=2)  # both trials are timed again
    assert more is not None and more.rounds == 2 and all(len(ms) == 2 for ms in more.timings.values())


def test_a_reference_that_fails_in_the_first_round_is_named_by_tune_show(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from yolotune.cli import app
    from yolotune.errors import StepError

    study, _ = _study(tmp_path)

    class _Failing(_TableTarget):
        def benchmark(self, model_path: Path, *, imgsz: int):
            if model_path.name == "fp32.onnx":
                raise StepError("latency", "the device went away")
            return super().benchmark(model_path, imgsz=imgsz)

    target = _Failing({"fp32.onnx": 13.0, "shared.onnx": 6.3, "separate.onnx": 6.8}, per_round=3)
    retiming = retime_front(study, target=target, imgsz=320, rounds=3)
    assert retiming is not None and retiming.rounds == 0 and current_retiming(study) is None
    shown = CliRunner().invoke(app, ["show", "--study", "s", "--storage", f"sqlite:///{tmp_path / 's.db'}"])
    caption = " ".join(shown.output.split())
    assert shown.exit_code == 0, shown.output
    assert "re-timing has no round yet (its FP32 reference failed: latency failed: the device went away)" in caption
    assert "out of date" not in caption


def test_a_target_lost_while_re_timing_stops_with_the_rounds_done_and_drops_no_trial(tmp_path: Path) -> None:
    from yolotune import SearchStopped, YolotuneError
    from yolotune.errors import StepError

    study, _ = _study(tmp_path)

    class _Lost(_TableTarget):  # a device agent killed in the second round
        def check(self) -> None:
            if len(self.timed) >= 4:
                raise YolotuneError("device agent at http://pi:8765 unreachable (Connection refused)")

        def benchmark(self, model_path: Path, *, imgsz: int):
            if len(self.timed) >= 4:
                raise StepError("latency", "device agent at http://pi:8765 unreachable (Connection refused)")
            return super().benchmark(model_path, imgsz=imgsz)

    lost = _Lost({"fp32.onnx": 13.0, "shared.onnx": 6.3, "separate.onnx": 6.8}, per_round=3)
    with pytest.raises(SearchStopped, match=r"stopped timing during re-timing round 2 \(device agent .* unreachable"):
        retime_front(study, target=lost, imgsz=320, rounds=3)
    kept = current_retiming(study)
    assert kept is not None and kept.rounds == 1 and not kept.failed  # no trial blamed for the device
    assert [r.brief for r in pareto_front(study)] == ["shared", "separate", "fp32"]
    # started afresh (--fresh) and lost again: going on means the same command without --fresh, which starts over
    lost_again = _Lost(lost.true_ms, per_round=3)
    with pytest.raises(SearchStopped) as stopped:
        retime_front(study, target=lost_again, imgsz=320, rounds=3, fresh=True)
    assert str(stopped.value).endswith(
        "the 1 round(s) done are kept: run the same command again without --fresh to go on"
    )
    # the agent back: the same call goes on from the rounds done
    back = _TableTarget(lost.true_ms, per_round=3)
    again = retime_front(study, target=back, imgsz=320, rounds=3)
    assert again is not None and again.rounds == 3 and len(back.timed) == 6


def test_a_trial_whose_folder_was_deleted_is_re_timed_from_the_artifact_store(tmp_path: Path) -> None:
    study, _ = _study(tmp_path, store=tmp_path / "artifacts")
    true_ms = {"fp32.onnx": 13.0, "shared.onnx": 6.3, "separate.onnx": 6.8}
    first = retime_front(study, target=_TableTarget(true_ms, per_round=3), imgsz=320, rounds=2)
    assert first is not None and first.rounds == 2
    (tmp_path / "shared.onnx").unlink()  # its trial folder deleted by hand, or the study moved
    (tmp_path / "fp32.onnx").unlink()
    target = _TableTarget({**true_ms, "id-shared": 6.3, "id-fp32": 13.0}, per_round=3)
    again = retime_front(study, target=target, imgsz=320, rounds=3, artifacts=tmp_path / "artifacts")
    # the same bytes: the rounds done are kept, one more is timed, and no trial is left out
    assert again is not None and again.rounds == 3 and not again.failed
    assert sorted(target.timed) == ["id-fp32", "id-shared", "separate.onnx"]
    assert [r.brief for r in pareto_front(study)] == ["shared", "separate", "fp32"]


def test_a_trial_a_few_bytes_smaller_but_worse_is_not_on_the_front(tmp_path: Path) -> None:
    study, _ = _study(tmp_path)
    common = {"params": {"x": 0.4}, "distributions": {"x": FloatDistribution(0.0, 1.0)}}
    # "separate" less 1 byte, 5 points worse and slower: two INT8 graphs differ by quantization parameters
    path = tmp_path / "bytes.onnx"
    path.write_bytes(b"bytes")
    attrs = {"artifact": str(path), "brief": "bytes"}
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.300, 3.5 - 1e-6, 9.0], user_attrs=attrs, constraints={"map_drop": 0.0}, **common
        )
    )
    assert [r.brief for r in pareto_front(study)] == ["separate", "fp32"]  # Optuna's own front holds "bytes" too
    assert "bytes" in [t.user_attrs["brief"] for t in study.best_trials]
    target = _TableTarget({"fp32.onnx": 13.0, "shared.onnx": 6.3, "separate.onnx": 6.8, "bytes.onnx": 7.5}, per_round=4)
    retime_front(study, target=target, imgsz=320, rounds=2)
    assert [r.brief for r in pareto_front(study)] == ["shared", "separate", "fp32"]
